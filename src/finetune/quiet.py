"""Silence the libraries' false alarms, so the warnings a user sees are the ones that matter.

- DeepSpeed warns on every import on a machine without a GPU that it "was unable to detect" one: on such a
  machine we tell it the accelerator is the CPU (only when no accelerator is there and the user set none).
- bitsandbytes warns that an optional CPU kernel (for the bf16 repack that `model.disable_cpu_bf16_repack`
  turns off anyway) is missing, and repeats "MatMul8bitLt: inputs will be cast ..." on every 8-bit layer
  and step: the first is dropped, the second said once. Its paged optimizers warn on CPU, at each state
  buffer, that they run unpaged: train/arguments.py says that once in a note instead.
- peft 0.21 (preparing and loading an adapter) and TRL 1.16 (at each reference forward) read
  `is_gradient_checkpointing` / call `gradient_checkpointing_enable` as transformers 5 deprecates: a warning
  about their code, which the user can do nothing about (`checkpointing_deprecation`).
- peft, saving an adapter, looks for config.json beside the base to see whether the vocabulary grew; a GGUF
  base is one file with no config.json, so it warns (twice) about a check finetune does itself
  (model.fit_vocabulary trains and saves grown embeddings).
"""

from __future__ import annotations

import logging
import os
import warnings


class _Once(logging.Filter):
    """Let each distinct message template through once."""

    def __init__(self):
        super().__init__()
        self.seen: set = set()

    def filter(self, record: logging.LogRecord) -> bool:
        new = record.msg not in self.seen
        self.seen.add(record.msg)
        return new


def false_alarms() -> None:
    import torch

    accelerator = getattr(torch, "accelerator", None)
    if "DS_ACCELERATOR" not in os.environ and not (accelerator and accelerator.is_available()):
        os.environ["DS_ACCELERATOR"] = "cpu"
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    cast_logger = logging.getLogger("bitsandbytes.autograd._functions")
    if not any(isinstance(f, _Once) for f in cast_logger.filters):
        cast_logger.addFilter(_Once())
    warnings.filterwarnings(
        "ignore", message="Paged optimizers are not supported on CPU", category=UserWarning
    )
    for message in (r"Could not find a config file in .*\.gguf", r"Unable to fetch remote file.*\.gguf"):
        warnings.filterwarnings("ignore", message=message, category=UserWarning)
    checkpointing_deprecation()


def checkpointing_deprecation() -> None:
    """The one filter for peft's and TRL's reads of transformers 5's deprecated gradient-checkpointing names
    (without torch: the model stage calls it before wrapping the base)."""
    warnings.filterwarnings(
        "ignore",
        message=r".*(is_gradient_checkpointing|gradient_checkpointing_enable).*",
        category=FutureWarning,
    )
