"""`tokenizer_use_mistral_common: true`: what Mistral's own tokenizer cannot be combined with.

mistral-common formats a conversation itself (its request validation, control tokens, where a system prompt
goes), never encodes special tokens from text and cannot add tokens to its vocabulary. So with it the data is
`type: chat_template` conversations only, no Jinja template or added tokens are taken, and the method is
supervised fine-tuning (the TRL methods build their prompts as text, which this tokenizer cannot read back).
"""

from __future__ import annotations

from finetune import methods
from finetune.config.schema import Config

_OWN_FORMAT = "mistral-common formats conversations itself (tokenizer_use_mistral_common: true): remove it"
_NO_NEW_TOKENS = (
    "mistral-common's tokenizer cannot add tokens (tokenizer_use_mistral_common: true): remove it"
)


def mistral_common_checks(cfg: Config) -> list[tuple[tuple, str]]:
    """Each key that cannot go with tokenizer_use_mistral_common: true, with what to do instead."""
    if not cfg.tokenizer_use_mistral_common:
        return []
    problems = []
    key = methods.of(cfg).key
    if key is not None:
        problems.append(
            ((key,), "tokenizer_use_mistral_common: true trains supervised fine-tuning only here: remove one")
        )
    if cfg.base_is_gguf:
        problems.append(
            (
                ("tokenizer_use_mistral_common",),
                "a GGUF base carries its own tokenizer: use the model folder with tekken.json",
            )
        )
    for name in ("chat_template", "chat_template_jinja"):
        if getattr(cfg, name):
            problems.append(((name,), _OWN_FORMAT))
    for name in ("special_tokens", "tokens", "eot_tokens"):
        if getattr(cfg, name):
            problems.append(((name,), _NO_NEW_TOKENS))
    for group in ("datasets", "test_datasets"):
        for i, ds in enumerate(getattr(cfg, group) or []):
            if ds.type != "chat_template":
                problems.append(
                    (
                        (group, i, "type"),
                        "tokenizer_use_mistral_common: true formats conversations only: use type: chat_template",
                    )
                )
            elif ds.chat_template:
                problems.append(((group, i, "chat_template"), _OWN_FORMAT))
    return problems
