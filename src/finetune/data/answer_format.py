"""What ends a generated answer and how long one may be, as training laid answers out: the tokenizer's EOS
(appended to every text answer), the chat format's end-of-turn tokens, the model's own stop tokens; and room
for the longest target. Shared by `finetune generate`, `finetune eval` and the training-time metrics."""

from __future__ import annotations

from finetune.config import Config, DatasetConfig, DatasetType
from finetune.data import formats


def format_kind(ds: DatasetConfig) -> str:
    """custom | alpaca (alpaca:<style>) | completion | input_output | chat"""
    if isinstance(ds.type, DatasetType):
        return "custom"
    return "chat" if ds.type == "chat_template" else ds.type


def stop_ids(cfg: Config, ds: DatasetConfig, tokenizer, model) -> list[int]:
    """Tokens that end an answer: the tokenizer's EOS (appended to every text answer in training), the chat
    format's end-of-turn tokens, and the model's own generation_config stop tokens."""
    ids = [tokenizer.eos_token_id]
    if format_kind(ds) == "chat":
        spec = formats.build_format(cfg, ds, "datasets[0]", tokenizer).spec
        ids += tokenizer.convert_tokens_to_ids(list(spec.eot_tokens))
    own = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids += own if isinstance(own, list) else [own]
    return [i for i in dict.fromkeys(ids) if isinstance(i, int) and i != tokenizer.unk_token_id]


MAX_AUTO_NEW_TOKENS = 1024


def auto_max_new_tokens(tokenizer, targets: list[str]) -> int:
    """Enough for the longest target plus some slack (16 tokens), at most MAX_AUTO_NEW_TOKENS."""
    longest = max((len(ids) for ids in formats.token_ids(tokenizer, targets, False)), default=0)
    return min(MAX_AUTO_NEW_TOKENS, longest + 16)
