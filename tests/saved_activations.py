"""What autograd keeps for backward, measured: the plan's activation figures are checked against this."""

from __future__ import annotations

DIMS = {"vocab_size": 512, "hidden_size": 96, "intermediate_size": 256, "num_attention_heads": 6,
        "num_key_value_heads": 2}  # fmt: skip


def per_layer_token(
    batch: int, seq: int, targets="all-linear", attn: str = "sdpa", dropout: float = 0.0
) -> float:
    """Bytes one LoRA decoder layer saves per token (fp32, CPU): the saved tensors of a 3-layer model minus a
    2-layer one's (saved_tensors_hooks; parameters left out), over batch x seq tokens."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    def saved_bytes(layers: int) -> int:
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(num_hidden_layers=layers, attn_implementation=attn, **DIMS))
        model = get_peft_model(model, LoraConfig(r=8, target_modules=targets, lora_dropout=dropout))
        model.train()
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        seen: dict[int, int] = {}

        def pack(t):
            s = t.untyped_storage()
            if s.data_ptr() not in params:
                seen[s.data_ptr()] = s.nbytes()
            return t

        ids = torch.randint(0, 512, (batch, seq))
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(input_ids=ids, labels=ids)
        return sum(seen.values())

    return (saved_bytes(3) - saved_bytes(2)) / (batch * seq)
