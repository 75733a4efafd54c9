"""Checks beyond a field's type: the allowed values of single keys (rules across keys: cross_checks.py).

The schema (schema.py) attaches these as field validators, so pydantic reports them with the key's
location. Each message says what to set instead.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

from finetune import methods
from finetune.config.datasets import check_exists

if TYPE_CHECKING:
    pass

OPTIMIZERS = (
    "adamw_torch",
    "adamw_torch_fused",
    "adamw_8bit",
    "adamw_bnb_8bit",
    "paged_adamw_8bit",
    "paged_adamw_32bit",
    "adamw_torch_8bit",
    "adafactor",
    "sgd",
    "lion_8bit",
    "paged_lion_8bit",
)
SCHEDULERS = (
    "cosine",
    "linear",
    "constant",
    "constant_with_warmup",
    "cosine_with_restarts",
    "polynomial",
    "inverse_sqrt",
)
# axolotl's older attention flags and the attn_implementation each asks for (xformers: see model/compute.py)
ATTENTION_FLAGS = {
    "flash_attention": "flash_attention_2",
    "flex_attention": "flex_attention",
    "eager_attention": "eager",
    "xformers_attention": "sdpa",
    "sdp_attention": "sdpa",
}
LIGER_PLUGIN = "axolotl.integrations.liger.LigerPlugin"
CCE_PLUGIN = "axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin"
LM_EVAL_PLUGIN = "axolotl.integrations.lm_eval.LMEvalPlugin"  # lm_eval_tasks is what takes effect
PLUGINS = (LIGER_PLUGIN, CCE_PLUGIN, LM_EVAL_PLUGIN)
RL_LATER = ("ipo",)  # axolotl's other rl: values, refused (ipo is a DPO loss here)
# TRL 1.16 DPOConfig.loss_type values.
DPO_LOSSES = (
    "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot", "aot_unpaired",
    "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm",
)  # fmt: skip


# ---------------------------------------------------------------- single keys (field validators)


def deepspeed_exists(v):
    return check_exists(v, "deepspeed config") if isinstance(v, str) else v


# A hub id is `name` or `org/name` (huggingface_hub's validate_repo_id: word characters, '-' and '.', neither
# of the last two at either end, no '--' or '..', at most 96 characters a part). Anything else can only be a
# local path: `/x`, `./x`, `../x`, `~/x`, `a/b/c`, `x.gguf` (a file), `my model`.
_HUB_PART = r"\w(?:[\w.-]{0,94}\w)?"
HUB_ID = re.compile(rf"(?:{_HUB_PART}/)?{_HUB_PART}")


def path_shaped(name: str) -> bool:
    """Whether `name` can only be a local path (then it must exist), never a hub id."""
    return not HUB_ID.fullmatch(name) or "--" in name or ".." in name or name.lower().endswith(".gguf")


def model_path_exists(v: str | None) -> str | None:
    """base_model, base_model_config, tokenizer_config, lora_model_dir: a hub id, or a local path that exists."""
    if v and path_shaped(v) and not os.path.exists(os.path.expanduser(v)):
        raise ValueError(f"not found: {v} (a hub id is name or org/name)")
    return v


def known_rl(v: str | None) -> str | None:
    """rl: one of the method table's (finetune.methods)."""
    implemented = sorted(methods.rl_names())
    if v is None or v in implemented:
        return v
    hint = " (rl: dpo with dpo_loss_type: ipo trains the IPO loss)" if v == "ipo" else ""
    if v in RL_LATER:
        raise ValueError(f"'{v}' is not implemented yet (implemented: {', '.join(implemented)}){hint}")
    raise ValueError(f"'{v}' is not a known method (implemented: {', '.join(implemented)})")


def known_dpo_loss(v):
    for name in [v] if isinstance(v, str) else v or []:
        if name not in DPO_LOSSES:
            raise ValueError(f"'{name}' is not a DPO loss (known: {', '.join(DPO_LOSSES)})")
    return v


def known_optimizer(v: str) -> str:
    if v not in OPTIMIZERS:
        raise ValueError(f"'{v}' is not supported (supported: {', '.join(OPTIMIZERS)})")
    return v


def known_scheduler(v: str) -> str:
    if v not in SCHEDULERS:
        raise ValueError(f"'{v}' is not supported (supported: {', '.join(SCHEDULERS)})")
    return v


def known_lora_init(v):
    if v is None or isinstance(v, bool) or v == "gaussian":
        return v
    raise ValueError(
        f"must be true, false or 'gaussian' (got {v!r}); peft's pissa, olora, loftq and eva rewrite the base "
        "weights or need data first, which finetune does not do"
    )


def low_cpu_mem_usage_only_true(v: bool | None) -> bool | None:
    if v is False:
        raise ValueError(
            "transformers 5 always loads with low memory (the argument is gone): remove the key or set it to true"
        )
    return v
