"""Full fine-tuning (no `adapter:`) and `unfrozen_parameters`: the rules on the config, and the patterns.

axolotl trains every weight when `adapter:` is absent or null; finetune does the same on a 16/32-bit base (a
4-bit or 8-bit weight is an integer code that no optimizer step can update, so such a base is refused). Full
fine-tuning is supervised fine-tuning here; the TRL methods and reward models keep their adapter.

`unfrozen_parameters` is axolotl's list of patterns over parameter names (`model.layers.0.mlp.down_proj.weight`,
`lm_head.weight`): with no adapter only the matching parameters train; with LoRA they train beside the adapter.
The patterns are read as axolotl reads them (its utils/freeze.py): a `.` is a literal dot, not "any
character", and a pattern matches from the start of the name (`re.match`), so `^lm_head.*` is `lm_head`
followed by dots or nothing, and `layers.4[4-9]+.mlp` matches layers 44-49. axolotl's index-range suffix
(`embed_tokens.weight$[:32000]`, train only some rows) is refused: weight decay would still move the other rows.
"""

from __future__ import annotations

import re

from finetune import methods
from finetune.config.deepspeed import zero_stage
from finetune.config.fsdp import requested as fsdp_requested
from finetune.config.schema import Config

_RANGE = re.compile(r"^(.+)\[([0-9]*)(?::([0-9]*))?\]$")  # axolotl's `pattern[start:end]` suffix


def unfrozen_pattern(text: str) -> re.Pattern:
    """axolotl's reading of one unfrozen_parameters entry: dots are literal, matched from the name's start."""
    return re.compile(text.replace(".", "\\."))


def pattern_problem(text: str) -> str | None:
    if _RANGE.match(text):
        return (
            f"{text!r}: index ranges ([start:end]) are not supported (weight decay would still move the rows "
            "outside the range): unfreeze the whole tensor"
        )
    try:
        unfrozen_pattern(text)
    except re.error as exc:
        return f"{text!r} is not a valid regular expression ({exc})"
    return None


def full_checks(cfg: Config) -> list[tuple[tuple, str]]:
    """What full fine-tuning and unfrozen_parameters cannot be combined with, each at the key to change."""
    problems = []
    if cfg.adapter is None:
        for key, bits in (("load_in_4bit", "4-bit"), ("load_in_8bit", "8-bit")):
            if getattr(cfg, key):
                problems.append(
                    (
                        (key,),
                        f"full fine-tuning (no adapter) updates every weight, and {bits} weights cannot be "
                        f"updated: set {key}: false, or train an adapter (adapter: {'qlora' if bits == '4-bit' else 'lora'})",
                    )
                )
        key = methods.of(cfg).key
        if key is not None:
            problems.append(
                ((key,), "trains an adapter here (full fine-tuning is supervised only): set adapter: lora")
            )
        if cfg.fp16 or cfg.float16:
            key = "fp16" if cfg.fp16 else "float16"
            problems.append(
                (
                    (key,),
                    "full fine-tuning would hold and update the weights in fp16 (the Trainer's fp16 loss scaler "
                    "refuses fp16 weights, and fp16 steps lose small updates): use bf16: true, or an adapter",
                )
            )
        if cfg.lora_model_dir:
            problems.append(
                (("lora_model_dir",), "an adapter to continue, but no adapter: is set: set adapter: lora")
            )
        if cfg.loraplus_lr_ratio is not None:
            problems.append(
                (("loraplus_lr_ratio",), "LoRA+ needs an adapter: set adapter: lora or remove it")
            )
    for i, text in enumerate(cfg.unfrozen_parameters or []):
        why = pattern_problem(text)
        if why:
            problems.append((("unfrozen_parameters", i), why))
    if cfg.unfrozen_parameters and cfg.adapter is not None:
        key = methods.of(cfg).key
        if key is not None:
            problems.append(
                (
                    ("unfrozen_parameters",),
                    f"trains beside an adapter with supervised fine-tuning only (not {key})",
                )
            )
        if fsdp_requested(cfg) or zero_stage(cfg.deepspeed) == 3:
            engine = "FSDP" if fsdp_requested(cfg) else "ZeRO-3"
            problems.append(
                (
                    ("unfrozen_parameters",),
                    f"beside an adapter, not with {engine} yet (their sharded weights are not gathered for "
                    "saving): use ZeRO-1/2 or DDP, or no adapter",
                )
            )
    return problems
