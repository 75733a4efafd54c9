"""The config going out: the resolved config.yml saved with each run (secrets redacted), and the README's
config reference generated from the field descriptions (`python -m finetune.config`).
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from finetune.config.datasets import DatasetConfig, DatasetType, PreferenceType, UnpairedType
from finetune.config.schema import Config
from finetune.config.trl_keys import TrlConfig

SECRET_KEY = re.compile(r"(^|_)(api_key|apikey|secret|password|auth|hf_token|token)$", re.I)
REDACTED = "***"


def redact(value: Any, key: str = "") -> Any:
    """A copy with secret-looking keys (tokens, API keys, passwords) replaced by ***."""
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, key) for v in value]
    if key and SECRET_KEY.search(key) and isinstance(value, str) and value:
        return REDACTED
    return value


def resolved_dict(cfg: Config, versions: dict[str, str] | None = None) -> dict:
    """The config as run: defaults filled in, secrets redacted. Loads back with `load`."""
    data = cfg.model_dump(mode="json")
    if versions:
        data["finetune_versions"] = versions
    return redact(data)


def to_yaml(cfg: Config, versions: dict[str, str] | None = None) -> str:
    return yaml.safe_dump(resolved_dict(cfg, versions), sort_keys=False, allow_unicode=True, width=120)


def reference_markdown() -> str:
    """The config reference in README, generated from the field descriptions."""
    out = []
    for title, model in (
        ("Top-level keys", Config),
        ("`datasets[]` entries", DatasetConfig),
        ("Custom `type:` dict", DatasetType),
        ("Preference `type:` dict (rl: dpo / kto / orpo / simpo, reward_model)", PreferenceType),
        ("Unpaired `type:` dict (rl: kto: one completion and a true/false label a row)", UnpairedType),
        ("`trl:` block (rl: grpo)", TrlConfig),
    ):
        out += [f"#### {title}", "", "| key | default | what it does |", "|---|---|---|"]
        for name, field in model.model_fields.items():
            key = name
            default = (
                "required"
                if field.is_required()
                else f"`{field.default!r}`"
                if field.default is not None
                else ""
            )
            out.append(f"| `{key}` | {default} | {(field.description or '').replace('|', '/')} |")
        out.append("")
    return "\n".join(out)
