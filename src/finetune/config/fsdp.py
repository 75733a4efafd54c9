"""axolotl's FSDP keys (`fsdp_version`, `fsdp_config`, the older `fsdp:` list) read as one FSDP2 setting.

FSDP2 (`torch.distributed.fsdp.fully_shard`) is the only FSDP finetune runs: FSDP1 is deprecated in
transformers and accelerate. Keys mean what axolotl's docs and accelerate's FSDP1 -> FSDP2 guide say:

- `fsdp_config` keys may carry axolotl's older `fsdp_` prefix (`fsdp_offload_params` = `offload_params`);
- `sharding_strategy: FULL_SHARD` is `reshard_after_forward: true`, `SHARD_GRAD_OP` is `false`; `NO_SHARD` and
  the hybrid strategies have no FSDP2 meaning here (refused);
- FSDP1 keys FSDP2 made redundant (`use_orig_params`, `sync_module_states`, `limit_all_gathers`,
  `backward_prefetch: BACKWARD_PRE`) are accepted with a note; `forward_prefetch: true` is refused (FSDP2 has
  none yet);
- the `fsdp:` list: `full_shard`/`shard_grad_op` pick the resharding, `offload` offloads parameters, `auto_wrap`
  wraps each transformer layer (FSDP2 always does: the item is accepted).

`fsdp_settings` returns the normalized mapping and the problems, each at its key path; `config.validate` reports
the problems, `train.arguments` hands the mapping to TrainingArguments. No torch here.
"""

from __future__ import annotations

from typing import Any

# normalized key -> the type/values it accepts
BOOL_KEYS = (
    "reshard_after_forward",
    "offload_params",
    "cpu_ram_efficient_loading",
    "activation_checkpointing",
)
STATE_DICT_TYPES = ("FULL_STATE_DICT", "SHARDED_STATE_DICT")
WRAP_POLICIES = ("TRANSFORMER_BASED_WRAP", "SIZE_BASED_WRAP", "NO_WRAP")
REDUNDANT = {  # FSDP1 keys FSDP2 does not need (accelerate's FSDP1 -> FSDP2 guide): accepted, noted
    "use_orig_params": "FSDP2 always trains the original parameters",
    "sync_module_states": "FSDP2 needs no module-state sync (cpu_ram_efficient_loading covers loading once)",
    "limit_all_gathers": "FSDP2 manages its all-gathers itself",
    "backward_prefetch": "FSDP2 always prefetches in backward (BACKWARD_PRE)",
    "min_num_params": "only with auto_wrap_policy: SIZE_BASED_WRAP",
}
LIST_ITEMS = ("full_shard", "shard_grad_op", "offload", "auto_wrap")
RESHARD = {"FULL_SHARD": True, "SHARD_GRAD_OP": False}


def requested(cfg: Any) -> bool:
    """The config asks for FSDP (any of the three keys at a value other than off)."""
    return bool(cfg.fsdp or cfg.fsdp_config or cfg.fsdp_version)


def fsdp_settings(cfg: Any) -> tuple[dict | None, list[tuple[tuple, str]], list[str]]:
    """(settings, problems, notes): the normalized FSDP2 settings or None when FSDP is off."""
    if not requested(cfg):
        return None, [], []
    problems: list[tuple[tuple, str]] = []
    notes: list[str] = []
    raw = dict(cfg.fsdp_config or {})
    inner = [k for k in ("fsdp_version", "version") if k in raw]  # axolotl also reads it inside fsdp_config
    inner_version = raw.pop(inner[0]) if inner else None
    for k in inner[1:]:
        raw.pop(k)
    version = next((v for v in (cfg.fsdp_version, inner_version) if v is not None), 2)
    if str(version) != "2":
        where = ("fsdp_version",) if cfg.fsdp_version is not None else ("fsdp_config", inner[0])
        problems.append((where, f"FSDP{version} is not supported: use 2 (FSDP2, PyTorch's fully_shard)"))
    if cfg.deepspeed:
        problems.append((("deepspeed",), "choose one engine: DeepSpeed or FSDP (fsdp_* keys), not both"))

    settings: dict[str, Any] = {
        "reshard_after_forward": True,
        "offload_params": False,
        "cpu_ram_efficient_loading": False,
        "state_dict_type": "FULL_STATE_DICT",
        "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "transformer_layer_cls_to_wrap": None,
        "activation_checkpointing": False,
    }
    problems += _list_form(cfg.fsdp, settings)
    for given, value in raw.items():
        key = given[5:] if given.startswith("fsdp_") else given
        where = ("fsdp_config", given)
        if key in BOOL_KEYS:
            if not isinstance(value, bool):
                problems.append((where, f"must be true or false, not {value!r}"))
            else:
                settings[key] = value
        elif key == "sharding_strategy":
            if str(value).upper() not in RESHARD:
                problems.append((where, f"{value} has no FSDP2 meaning: use FULL_SHARD or SHARD_GRAD_OP"))
            else:
                settings["reshard_after_forward"] = RESHARD[str(value).upper()]
        elif key == "state_dict_type":
            if str(value).upper() not in STATE_DICT_TYPES:
                problems.append((where, f"must be one of {', '.join(STATE_DICT_TYPES)}"))
            else:
                settings[key] = str(value).upper()
        elif key == "auto_wrap_policy":
            if str(value).upper() not in WRAP_POLICIES:
                problems.append((where, f"must be one of {', '.join(WRAP_POLICIES)}"))
            else:
                settings[key] = str(value).upper()
        elif key == "transformer_layer_cls_to_wrap":
            names = value.split(",") if isinstance(value, str) else value
            if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
                problems.append((where, "must be a class name, a comma-separated list of them, or a list"))
            else:
                settings[key] = [n.strip() for n in names]
        elif key == "forward_prefetch":
            if value:
                problems.append((where, "FSDP2 has no forward prefetch: remove this"))
        elif key in REDUNDANT:
            notes.append(f"fsdp_config.{given}: no effect under FSDP2 ({REDUNDANT[key]})")
        else:
            problems.append((where, "unknown FSDP setting"))
    return settings, problems, notes


def _list_form(value: Any, settings: dict) -> list[tuple[tuple, str]]:
    """axolotl's older `fsdp: [full_shard, auto_wrap]` (or the same as one string)."""
    if not value:
        return []
    items = value.split() if isinstance(value, str) else value
    if not isinstance(items, list):
        return [(("fsdp",), "must be a list such as [full_shard, auto_wrap]")]
    problems = []
    for i, item in enumerate(items):
        name = str(item).lower()
        if name == "full_shard":
            settings["reshard_after_forward"] = True
        elif name == "shard_grad_op":
            settings["reshard_after_forward"] = False
        elif name == "offload":
            settings["offload_params"] = True
        elif name == "auto_wrap":
            pass  # FSDP2 wraps each transformer layer (auto_wrap_policy) either way
        else:
            problems.append((("fsdp", i), f"{item} has no FSDP2 meaning here (use {', '.join(LIST_ITEMS)})"))
    return problems
