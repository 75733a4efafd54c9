"""Load the tokenizer a run uses: special tokens, added tokens and the chat template applied once, here.

Data formatting, training, merge and generation all call `load_tokenizer`, so they agree on every token.
"""

from __future__ import annotations

from finetune.config import Config
from finetune.errors import UserError


def load_tokenizer(cfg: Config):
    """AutoTokenizer from tokenizer_config or base_model, with `special_tokens`, `tokens` and `chat_template`."""
    from transformers import AutoTokenizer

    source = cfg.tokenizer_config or cfg.base_model
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source,
            revision=cfg.revision_of_model,
            trust_remote_code=cfg.trust_remote_code,
            use_fast=cfg.tokenizer_use_fast,
        )
    except OSError as exc:
        raise UserError(
            f"base_model: cannot load a tokenizer from {source!r} ({str(exc).splitlines()[0]})"
        ) from None
    if cfg.special_tokens:
        tokenizer.add_special_tokens(dict(cfg.special_tokens))
    if cfg.tokens:
        tokenizer.add_tokens(list(cfg.tokens))
    if tokenizer.pad_token is None:
        # Llama-style tokenizers ship without a pad token; padding is masked out of the loss and attention.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
