"""What every format shares: a row's status, the label of untrained tokens, the Format a dataset entry
becomes, and reading a text field with one-line errors. Its own module so the chat format and the text
formats both build on it without importing each other in a circle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from finetune.data.chat import ChatSpec
    from finetune.data.formats import SegmentsSpec, TextSpec

IGNORE = -100  # the label of a token that is not trained (the loss skips it): HF's and PyTorch's convention
OK, EMPTY, ERROR = 0, 1, 2  # a row's status after encoding


@dataclass(frozen=True)
class Format:
    spec: TextSpec | ChatSpec | SegmentsSpec
    train_on_inputs: bool
    sequence_len: int
    truncate: bool
    chunk_step: int = 0  # completion: a text longer than sequence_len becomes chunks starting this far apart
    min_len: int = 0  # min_sample_len: rows of fewer tokens are dropped


class RowError(ValueError):
    """A problem with one row: the message names the field; the caller adds file and line."""


def text_value(row: dict, key: str, required: bool = True, name: str | None = None) -> str:
    """row[key] as a string ("" when optional and absent); `name` is how messages call the field."""
    value, name = row.get(key), name or key
    if value is None:
        if required:
            raise RowError(f"missing field '{name}'")
        return ""
    if not isinstance(value, str):
        raise RowError(f"field '{name}': expected a string, got {type(value).__name__} {str(value)[:40]!r}")
    return value
