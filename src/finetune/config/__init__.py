"""The run's configuration: axolotl-style YAML read once, validated once, then trusted.

`load(path, overrides)` returns a frozen `Config` or raises `ConfigError` listing every problem in the
file at once, one line each: `file.yaml:12: lora_alhpa: unknown key (did you mean lora_alpha?)`.
Field descriptions double as the README's config reference (`python -m finetune.config`).
Only pydantic and PyYAML are imported here, so `finetune validate` stays fast (no torch).

This module is the entry point and the order of checks; import config names from here. The pieces:
schema.py (`Config`, the flat top-level keys, declared in keys_*.py), datasets.py (`datasets:` entries and
their `type:` dicts), checks.py (allowed values), cross_checks.py and full_checks.py (cross-key rules),
yaml_io.py (line numbers, `--set`, messages), output.py (redacted config.yml, README reference).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import AliasChoices, BaseModel, ValidationError

from finetune import methods
from finetune.config import axolotl_keys, axolotl_other_keys, trl_keys, yaml_io
from finetune.config.checks import (  # noqa: F401 - re-exported
    CCE_PLUGIN,
    DPO_LOSSES,
    LIGER_PLUGIN,
    OPTIMIZERS,
    RL_LATER,
    SCHEDULERS,
)
from finetune.config.cross_checks import cross_checks
from finetune.config.datasets import (  # noqa: F401 - re-exported
    DATASET_TYPES,
    KTO_TYPES,
    PREFERENCE_TYPE_KEYS,
    DatasetConfig,
    DatasetType,
    DatasetTypeValue,
    PreferenceType,
    UnpairedType,
)
from finetune.config.output import (  # noqa: F401 - re-exported
    REDACTED,
    SECRET_KEY,
    redact,
    reference_markdown,
    resolved_dict,
    to_yaml,
)
from finetune.config.schema import Config, Positive  # noqa: F401 - re-exported
from finetune.config.yaml_io import ConfigError, apply_override  # noqa: F401 - re-exported


def _known_keys(model: type[BaseModel]) -> set[str]:
    keys = set()
    for name, field in model.model_fields.items():
        keys.add(name)
        if isinstance(field.validation_alias, AliasChoices):
            keys.update(c for c in field.validation_alias.choices if isinstance(c, str))
    return keys


def validate(
    raw: Any,
    source: str = "<config>",
    lines: dict[tuple, int] | None = None,
    overridden: set[tuple] = frozenset(),
) -> Config:
    """Validate a raw mapping into a Config, or raise ConfigError with every problem."""
    lines = lines or {}

    def where(loc: tuple) -> str:
        for n in range(len(loc), 0, -1):
            if loc[:n] in overridden:
                return f"{source}: --set "
            if loc[:n] in lines:
                return f"{source}:{lines[loc[:n]]}: "
        return f"{source}: "

    if not isinstance(raw, dict):
        raise ConfigError([f"{source}: expected a mapping of keys at the top level"])
    problems: list[str] = []
    data = {}
    known = _known_keys(Config)
    for key, value in raw.items():
        key = str(key)
        if key in axolotl_other_keys.IGNORED or (value is None and key in known):
            continue  # `key:` left empty is axolotl's way of saying "default"
        if key in axolotl_keys.UNSUPPORTED and key not in known:
            if not axolotl_keys.is_off(key, value):
                problems.append(
                    f"{where((key,))}{key}: not supported by finetune yet (remove it or set it to null)"
                )
            continue
        data[key] = value
    _preference_defaults(data, problems, where)
    _batch_size(data, problems, where)
    _tokens_dict(data, problems, where)
    for key in ("datasets", "test_datasets"):
        if isinstance(data.get(key), list):
            data[key] = [yaml_io.drop_nulls(entry) for entry in data[key]]
            # pair methods with no `type:` read the prompt/chosen/rejected columns (grpo reads SFT formats)
            if data.get("rl") not in (None, "grpo") or data.get("reward_model"):
                for entry in data[key]:
                    if isinstance(entry, dict) and "type" not in entry:
                        entry["type"] = PreferenceType().model_dump()
            for i, entry in enumerate(data[key]):
                for name in (
                    [n for n in entry if n in axolotl_other_keys.DATASET_UNSUPPORTED]
                    if isinstance(entry, dict)
                    else []
                ):
                    if not axolotl_keys.is_off(name, entry.pop(name)):
                        loc = (key, i, name)
                        problems.append(
                            f"{where(loc)}{yaml_io.format_loc(loc)}: not supported by finetune yet (remove it or set it to null)"
                        )
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        seen = set()
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and yaml_io.TYPE_TAGS.match(p)))
            if loc in seen:
                continue
            seen.add(loc)
            name = str(loc[-1]) if loc else ""
            if err["type"] == "extra_forbidden":
                parent = (
                    Config
                    if len(loc) == 1
                    else PreferenceType
                    if "pref" in err["loc"]
                    else UnpairedType
                    if "kto" in err["loc"]
                    else DatasetType
                    if "type" in loc[:-1]
                    else DatasetConfig
                )
                text = yaml_io.unknown_key(name, _known_keys(parent))
            else:
                text = yaml_io.friendly(err, secret=bool(SECRET_KEY.search(name)))
            problems.append(f"{where(loc)}{yaml_io.format_loc(loc)}: {text}")
        cfg = None
    if cfg is not None:
        problems += [f"{where(loc)}{yaml_io.format_loc(loc)}: {text}" for loc, text in cross_checks(cfg)]
        if methods.of(cfg).online:  # reward functions: built-in names, or modules next to the config file
            folder = Path(source).parent if Path(source).is_file() else Path.cwd()
            cfg._config_dir = str(folder.resolve())
            problems += [
                f"{where(loc)}{yaml_io.format_loc(loc)}: {text}"
                for loc, text in trl_keys.reward_problems(cfg.trl, folder)
            ]
    if problems:
        raise ConfigError(sorted(problems, key=yaml_io.line_of))
    return cfg


def _preference_defaults(data: dict, problems: list[str], where) -> None:
    """axolotl's deprecated `dpo_beta` is read as rl_beta (the saved config says rl_beta), with a warning."""
    if data.get("dpo_beta") is None:
        return
    if data.get("rl_beta") is not None:
        problems.append(f"{where(('dpo_beta',))}dpo_beta: deprecated name of rl_beta; set only rl_beta")
        return
    data["rl_beta"] = data.pop("dpo_beta")
    print(
        f"warning: {where(('dpo_beta',))}dpo_beta: deprecated (axolotl's old name); read as rl_beta: {data['rl_beta']}",
        file=sys.stderr,
    )


def _batch_size(data: dict, problems: list[str], where) -> None:
    """axolotl's older `batch_size` (rows per optimizer step on each device) is read as gradient_accumulation_steps
    = batch_size / micro_batch_size, so the saved config says what ran. Wrong types are left to pydantic."""
    size, micro = data.get("batch_size"), data.get("micro_batch_size", 1)
    if size is not None and micro == "auto":
        problems.append(
            f"{where(('batch_size',))}batch_size: needs a number for micro_batch_size (auto is chosen at train "
            "time): set gradient_accumulation_steps instead"
        )
        return
    if size is None or not all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (size, micro)
    ):
        return
    if data.get("gradient_accumulation_steps") is not None:
        problems.append(
            f"{where(('batch_size',))}batch_size: set either batch_size or gradient_accumulation_steps, not both"
        )
    elif size % micro:
        problems.append(
            f"{where(('batch_size',))}batch_size: must be a multiple of micro_batch_size ({micro}), got {size}"
        )
    else:
        del data["batch_size"]
        data["gradient_accumulation_steps"] = size // micro


def _tokens_dict(data: dict, problems: list[str], where) -> None:
    """axolotl's old `tokens:` mapping (bos_token/eos_token/pad_token/unk_token) is read as special_tokens, so
    the saved config says special_tokens; `tokens:` as a list (new tokens for the vocabulary) is unchanged."""
    tokens = data.get("tokens")
    if not isinstance(tokens, dict):
        return
    special = data.get("special_tokens") or {}
    if not isinstance(special, dict):
        return  # pydantic reports special_tokens' type
    clash = [k for k in tokens if k in special and special[k] != tokens[k]]
    if clash:
        problems.append(
            f"{where(('tokens',))}tokens: {clash[0]} is also set in special_tokens with another value: set it once"
        )
        return
    data["special_tokens"] = {**special, **tokens}
    del data["tokens"]


def load(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read an axolotl-style YAML file (safe loader), apply `--set` overrides, validate."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{source}: config file not found"]) from None
    except (IsADirectoryError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{source}: cannot read config ({exc.__class__.__name__})"]) from None
    return loads(text, source, overrides)


def loads(text: str, source: str = "<config>", overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """`load` of YAML text already in hand (the Studio's editor), messages naming `source` and its lines."""
    try:
        raw = yaml.safe_load(text) or {}
        lines = yaml_io.line_map(yaml.compose(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError as exc:
        line, problem = yaml_io.yaml_error(exc, text)
        at = f":{line}" if line else ""
        raise ConfigError([f"{source}{at}: invalid YAML: {problem}"]) from None
    overridden = set()
    for assignment in overrides:
        if isinstance(raw, dict):
            apply_override(raw, assignment)
            overridden.add(tuple(yaml_io.parse_override_path(assignment.partition("=")[0].strip())))
    return validate(raw, source, lines, overridden)


if __name__ == "__main__":
    print(reference_markdown())
