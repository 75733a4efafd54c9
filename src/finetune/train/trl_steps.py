"""The steps every TRL trainer of finetune takes, written once (train/preference.py: reward model and DPO;
train/kto_orpo_simpo.py; train/grpo.py): the run's TrainingArguments copied into the method's TRL config,
the model card left to finetune, and the trainable weights kept as the model stage made them."""

from __future__ import annotations

from dataclasses import fields


def trl_config(config_class, args, method_values: dict, pinned: dict):
    """`config_class` (DPOConfig, GRPOConfig ...) with every value of the run's TrainingArguments
    (train/arguments.py), the keys TRL defaults differently pinned to what the config says (`pinned`: bf16 and
    gradient checkpointing at least: TRL turns bf16 on even on CPU, and checkpointing on, where adapter.wrap
    decided), then the method's own settings (the table's trl_values)."""
    from transformers import TrainingArguments

    values = {f.name: getattr(args, f.name) for f in fields(TrainingArguments) if f.init}
    return config_class(**{**values, **pinned, **method_values})


def pinned(args, **more) -> dict:
    """The TrainingArguments values TRL's configs would otherwise change: bf16 (TRL's default is on, even on
    CPU) and gradient checkpointing (adapter.wrap decided), plus the builder's own."""
    return {"bf16": args.bf16, "gradient_checkpointing": args.gradient_checkpointing, **more}


class FinetuneCard:
    """Mixed into each TRL trainer: TRL writes its own README.md into output_dir at every checkpoint;
    finetune's card (outputs/card) replaces it, written from the run's files."""

    def create_model_card(self, *args, **kwargs):
        """Nothing: finetune writes the card."""


def trainable_weights(model) -> dict:
    """The trainable tensors as the model stage made them (references, no copy), for restore_trainable_weights."""
    return {name: p.data for name, p in model.named_parameters() if p.requires_grad}


def restore_trainable_weights(model, weights: dict) -> None:
    """Undo TRL's bf16 cast of trainable weights on quantized bases (trl dpo/reward_trainer `_is_quantized_model`):
    each gets back the very tensor the model stage made (no copy was kept, the cast made new ones), so the adapter
    trains in the dtype SFT uses (bf16 weights on a CPU fp32 run round away updates smaller than ~0.4% of a
    weight) and an adapter from lora_model_dir is not rounded before it starts (nor apart from its reference)."""
    for name, param in model.named_parameters():
        original = weights.get(name)
        if original is not None and param.data is not original:
            param.data = original


def reference_without_copy(model, keep_copy: bool) -> bool:
    """Drop TRL's frozen copy of a fresh adapter: with it gone, the trainer scores the reference with the adapter
    switched off, which is the same network (LoRA's B starts at zero) without a second set of weights.
    Returns whether a copy was dropped."""
    if keep_copy or "ref" not in getattr(model, "peft_config", {}):
        return False
    model.delete_adapter("ref")
    model.set_adapter("default")
    return True
