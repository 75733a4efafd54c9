"""A tiny, deterministic Llama-architecture model and tokenizer, saved in the Hugging Face layout.

Tests, examples and `finetune train --smoke` use it so nothing needs the hub: the same loader that reads
`meta-llama/...` reads this folder. The tokenizer is a byte-level BPE trained on text shipped with the
package, with Llama 3's special tokens and chat template, so chat-format data is tested for real.
Same seed -> byte-identical files.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

BOS, EOS, EOT, PAD = "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|finetune_right_pad_id|>"
SPECIAL_TOKENS = [
    BOS,
    EOS,
    "<|start_header_id|>",
    "<|end_header_id|>",
    EOT,
    PAD,
    "<|reserved_special_token_0|>",
]

# Llama 3's chat template, trimmed of tool calling; `{% generation %}` marks let HF return assistant masks.
LLAMA3_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{%- if message['role'] == 'assistant' %}{% generation %}{{- message['content'] | trim + '<|eot_id|>' }}{% endgeneration %}"
    "{%- else %}{{- message['content'] | trim + '<|eot_id|>' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)


def build_tokenizer(vocab_size: int = 1024):
    """Byte-level BPE trained on the package's finance corpus; returns a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = resources.files("finetune").joinpath("assets/tiny_corpus.txt").read_text(encoding="utf-8")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus.splitlines(), trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOT,  # as in Llama-3.1-8B-Instruct: generation stops at end of turn
        pad_token=PAD,
        chat_template=LLAMA3_CHAT_TEMPLATE,
        model_max_length=8192,
    )


def build_model(
    tokenizer,
    seed: int = 0,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate_size: int = 128,
):
    """A randomly initialised LlamaForCausalLM sized for CPU tests (~150k parameters by default)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=16384,
        rope_theta=500000.0,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def write_tiny_model(out_dir: str | Path, seed: int = 0, **sizes) -> Path:
    """Write model (safetensors) + tokenizer to `out_dir`; loadable with AutoModelForCausalLM/AutoTokenizer."""
    out_dir = Path(out_dir)
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, seed=seed, **sizes)
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(EOS)]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir
