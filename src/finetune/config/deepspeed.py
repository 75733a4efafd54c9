"""The `deepspeed:` value read as a dict (a path's JSON, or the inline mapping), and its ZeRO stage.

Here, below the model stage, because loading a model depends on the ZeRO stage (ZeRO-3 places the weights
itself, and stores 4-bit weights in the training dtype so it can shard them); pure JSON, no torch.
"""

from __future__ import annotations

import json
from pathlib import Path

from finetune.errors import UserError


def deepspeed_config(value: str | dict | None) -> dict | None:
    """The `deepspeed:` value as a dict: an inline mapping as it is, a path read as JSON."""
    if value is None or isinstance(value, dict):
        return value
    path = Path(value).expanduser()
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UserError(f"deepspeed: cannot read {value} ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"deepspeed: {value}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(loaded, dict):
        raise UserError(f"deepspeed: {value}: must hold a JSON object")
    return loaded


def zero_stage(value: str | dict | None) -> int | None:
    """ZeRO stage of a DeepSpeed config (0 when it has no zero_optimization); None without DeepSpeed."""
    ds = deepspeed_config(value)
    if ds is None:
        return None
    return int((ds.get("zero_optimization") or {}).get("stage", 0))
