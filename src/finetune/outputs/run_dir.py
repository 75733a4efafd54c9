"""What a finished (or interrupted) run leaves in output_dir, read back for the card and for merge.

The contract with the recipe (train/__init__.py): config.yml (resolved config, `finetune_versions` inside),
adapter_config.json + adapter_model.safetensors + tokenizer files, trainer_state.json (HF's), all_results.json /
train_results.json / eval_results.json, loss.png, checkpoint-<step>/ folders. An interrupted run has no final adapter or
trainer_state.json: the newest checkpoint's are used.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from finetune.config import (
    Config,
    ConfigError,
    DatasetConfig,
    DatasetType,
    PreferenceType,
    load,
    trl_keys,
)
from finetune.config.datasets import type_tag
from finetune.errors import UserError

_DATA_SUFFIXES = {".json", ".jsonl", ".csv", ".parquet", ".arrow", ".txt", ".yaml", ".yml"}


@dataclass(frozen=True)
class Run:
    """Everything a finished (or interrupted) run left behind that the card and merge read."""

    output_dir: Path
    cfg: Config
    config_text: str  # config.yml as saved
    state: dict = field(default_factory=dict)  # trainer_state.json
    results: dict = field(default_factory=dict)  # all_results + train_results + eval_results
    adapter_dir: Path | None = None  # folder holding adapter_config.json (output_dir or newest checkpoint)
    adapter: dict = field(default_factory=dict)  # adapter_config.json


def load_saved_config(path: Path) -> Config:
    """config.yml of a run; it was validated when saved, so paths that are gone (another machine) are fine, and
    so is a reward module that is missing or changed (reading a run never needs, nor runs, its code)."""
    try:
        return load(path)
    except ConfigError as exc:
        if not all("not found" in p or "trl.reward_funcs[" in p for p in exc.problems):
            raise
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))  # valid when written; only file checks failed

    def dataset(entry: dict) -> DatasetConfig:
        kind = entry.get("type", "alpaca")
        if isinstance(kind, dict):  # a custom SFT format, or a preference one (field_prompt/field_chosen ...)
            pref = type_tag(kind) == "pref"
            kind = (PreferenceType if pref else DatasetType)(**kind)
        return DatasetConfig.model_construct(**{**entry, "type": kind})

    for key in ("datasets", "test_datasets"):
        if raw.get(key):
            raw[key] = [dataset(e) for e in raw[key]]
    if isinstance(raw.get("trl"), dict):
        raw["trl"] = trl_keys.TrlConfig(**raw["trl"])
    return Config.model_construct(**raw)


def remote_code_allowed(cfg: Config, config_path: Path, allowed: bool | None) -> Config:
    """trust_remote_code from a saved config.yml is not enough to run code when a run is read: a downloaded run
    could turn it on, and loading its base would run the base's own Python. Training honours the key (the user
    wrote the config); reading a run needs the user's --trust-remote-code as well."""
    if not cfg.trust_remote_code:
        return cfg
    if allowed is False:
        raise UserError(
            f"{config_path}: trust_remote_code: true — loading this run's base runs the base's own code; "
            "pass --trust-remote-code if you trust it"
        )
    return cfg if allowed else cfg.model_copy(update={"trust_remote_code": False})


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


CHECKPOINT = re.compile(
    r"^checkpoint-(\d+)$"
)  # the Trainer's folder name (transformers' PREFIX_CHECKPOINT_DIR)


def checkpoints(output_dir: str | Path) -> list[Path]:
    """checkpoint-N folders, oldest step first (training resumes from the newest complete one; an interrupted
    run is read from its newest). All of them, not transformers' get_last_checkpoint: when the newest was cut
    off half-way, the one before it is the place to resume."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and CHECKPOINT.match(p.name)]
    return sorted(found, key=lambda p: int(CHECKPOINT.match(p.name).group(1)))


def newest_full_model(output_dir: str | Path) -> Path:
    """The newest checkpoint-N of an interrupted full fine-tune that holds a whole model (config.json and
    safetensors weights); one line saying what to do when none does."""
    for ckpt in reversed(checkpoints(output_dir)):
        weights = (ckpt / "model.safetensors").is_file() or (ckpt / "model.safetensors.index.json").is_file()
        if weights and (ckpt / "config.json").is_file():
            return ckpt
    raise UserError(
        f"{output_dir}: a full fine-tune with no saved model here or in a checkpoint-* folder (interrupted "
        "before its first checkpoint, or its checkpoints hold ZeRO-3/FSDP shards only): finish it with "
        "`finetune train CONFIG --resume`"
    )


def read_run(output_dir: str | Path, trust_remote_code: bool | None = None) -> Run:
    """A run folder, read without running anything in it. `trust_remote_code`: None for readers that load no
    model (card, push); for those that do (merge, export, eval, generate), the user's --trust-remote-code."""
    output_dir = Path(output_dir)
    config_path = output_dir / "config.yml"
    if not config_path.is_file():
        raise UserError(f"{output_dir}: no config.yml here — not a finetune output_dir")
    cfg = remote_code_allowed(load_saved_config(config_path), config_path, trust_remote_code)
    state = _read_json(output_dir / "trainer_state.json")
    for ckpt in reversed(checkpoints(output_dir)) if not state else []:
        if state := _read_json(ckpt / "trainer_state.json"):
            break
    results = {}
    for name in ("all_results.json", "train_results.json", "eval_results.json"):
        results.update(_read_json(output_dir / name))
    adapter_dir = next(
        (
            d
            for d in (output_dir, *reversed(checkpoints(output_dir)))
            if (d / "adapter_config.json").is_file()
        ),
        None,
    )
    adapter = _read_json(adapter_dir / "adapter_config.json") if adapter_dir else {}
    text = config_path.read_text(encoding="utf-8")
    return Run(output_dir, cfg, text, state, results, adapter_dir, adapter)


def is_hub_id(name: str | None) -> bool:
    """`owner/name` (or a bare legacy name) that is not a folder or file here: something to link on the hub."""
    if not name or name.startswith(("/", ".", "~")) or Path(name).suffix.lower() in _DATA_SUFFIXES:
        return False
    return bool(re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name)) and not Path(name).expanduser().exists()


def hub_base(run: Run) -> str | None:
    """The base model's hub id, or None for a local folder. Training records `base_model_local`, since a
    relative path (models/tiny) looks like a hub id from any other working directory."""
    local = fact(run, "base_model_local")
    if local is not None:
        return None if local else run.cfg.base_model
    return run.cfg.base_model if is_hub_id(run.cfg.base_model) else None


def fact(run: Run, key: str):
    """A run fact from all_results.json, else trainer_state.json, else None."""
    return run.results.get(key, run.state.get(key))
