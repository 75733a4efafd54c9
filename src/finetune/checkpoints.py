"""Where a run starts: a fresh output_dir, or the newest *complete* checkpoint (HF layout, checkpoint-N/).

A run killed while saving (kill -9, power cut, full disk) leaves a checkpoint folder with missing or cut-off
files. Resuming from it would crash, or worse, continue from half a state. The Trainer writes
trainer_state.json last, so its presence plus intact weight/optimizer files marks a finished save; anything
less is skipped with a warning and moved aside so the resumed run can save that step again.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import zipfile
from pathlib import Path

from finetune.config import Config
from finetune.errors import UserError
from finetune.files import check_output_dir

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def checkpoints(output_dir: str | Path) -> list[Path]:
    """checkpoint-N folders, oldest step first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and CHECKPOINT.match(p.name)]
    return sorted(found, key=lambda p: int(CHECKPOINT.match(p.name).group(1)))


def problem(ckpt: Path) -> str | None:
    """Why `ckpt` cannot be resumed from, or None when it is complete."""
    state = ckpt / "trainer_state.json"
    if not state.is_file():
        return "no trainer_state.json (the save did not finish)"
    try:
        json.loads(state.read_text(encoding="utf-8"))["global_step"]
    except (ValueError, KeyError, UnicodeDecodeError):
        return "trainer_state.json is cut off"
    weights = [ckpt / n for n in ("adapter_model.safetensors", "model.safetensors") if (ckpt / n).is_file()]
    if not weights:
        return "no adapter weights"
    from safetensors import safe_open

    for path in weights:
        try:
            with safe_open(str(path), "pt") as f:
                f.keys()
        except Exception:
            return f"{path.name} is cut off"
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        path = ckpt / name
        if path.is_file() and not zipfile.is_zipfile(path):  # torch.save writes a zip; cut off = no directory
            return f"{name} is cut off"
    has_optimizer = (ckpt / "optimizer.pt").is_file() or any(
        ckpt.glob("global_step*")
    )  # DeepSpeed: its own folder
    if not has_optimizer:
        return "no optimizer state"
    return None


def last_complete(output_dir: str | Path, warn=print, move_aside: bool = True) -> Path | None:
    """The newest complete checkpoint; newer incomplete ones are reported and (by the main process) moved aside."""
    for ckpt in reversed(checkpoints(output_dir)):
        why = problem(ckpt)
        if why is None:
            return ckpt
        if not move_aside:
            continue
        aside = ckpt.with_name(f".incomplete-{ckpt.name}")
        warn(f"skipping {ckpt}: {why}; moved to {aside.name}")
        if aside.exists():
            shutil.rmtree(aside)
        ckpt.rename(aside)
    return None


def resume_point(
    output_dir: str | Path, explicit: str | None, resume: bool, auto: bool, warn=print, is_main: bool = True
) -> Path | None:
    """Which checkpoint this run continues from, or None for a fresh start.

    `explicit` is resume_from_checkpoint from the config; `resume` is --resume (a checkpoint must exist);
    `auto` is auto_resume_from_checkpoints (resume when there is something to resume). Only the main
    process moves incomplete checkpoints aside; the others reach the same answer without touching files.
    """
    if explicit:
        path = Path(explicit)
        why = "not found" if not path.is_dir() else problem(path)
        if why:
            raise UserError(f"resume_from_checkpoint: {explicit}: {why}")
        return path
    if not (resume or auto):
        return None
    found = last_complete(output_dir, warn=warn, move_aside=is_main)
    if found is None and resume:
        raise UserError(
            f"--resume: no complete checkpoint in {output_dir} (train without --resume to start afresh)"
        )
    return found


def start_point(cfg: Config, overwrite: bool, resume: bool, is_main: bool, warn) -> Path | None:
    """Refuse a used output_dir unless asked; with --overwrite clear the old run; find the checkpoint to resume."""
    output_dir = Path(cfg.output_dir)
    continuing = resume or cfg.auto_resume_from_checkpoints or bool(cfg.resume_from_checkpoint)
    check_output_dir(output_dir, overwrite, continuing)
    if overwrite and is_main:
        clear_previous_run(output_dir)
    start = resume_point(
        output_dir,
        cfg.resume_from_checkpoint,
        resume,
        cfg.auto_resume_from_checkpoints,
        warn=warn,
        is_main=is_main,
    )
    if start is not None and is_main:
        changed = changed_keys(cfg, output_dir / "config.yml")
        if changed:
            warn(f"resuming with a config that differs from the interrupted run's in: {', '.join(changed)}")
    return start


def changed_keys(cfg: Config, saved: Path) -> list[str]:
    """Top-level keys whose value differs from the run saved in `saved` (config.yml), for a resume warning."""
    import yaml

    from finetune.config import resolved_dict

    if not saved.is_file():
        return []
    before = yaml.safe_load(saved.read_text(encoding="utf-8")) or {}
    now = resolved_dict(cfg)
    ignore = {"finetune_versions", "resume_from_checkpoint", "auto_resume_from_checkpoints"}
    return sorted(k for k in now.keys() | before.keys() if k not in ignore and now.get(k) != before.get(k))


def clear_previous_run(output_dir: Path) -> None:
    """--overwrite: drop the old run's checkpoints and metrics (they would mix with the new run's)."""
    for ckpt in checkpoints(output_dir):
        shutil.rmtree(ckpt)
    for path in output_dir.glob(".incomplete-checkpoint-*"):
        shutil.rmtree(path)
    (output_dir / "metrics.jsonl").unlink(missing_ok=True)


def resume_command() -> str:
    """The command that continues this run: the one given, with --resume and without --overwrite."""
    from finetune.launch import command_argv

    argv = command_argv()  # with --num-processes etc. when finetune launched the processes itself
    if "train" not in argv:
        return "finetune train CONFIG --resume"
    kept = [a for a in argv if a not in ("--overwrite", "--resume", "--smoke")]
    return "finetune " + shlex.join(kept) + " --resume"
