"""Where a run starts: a fresh output_dir, or the newest *complete* checkpoint (HF layout, checkpoint-N/).

A run killed while saving (kill -9, power cut, full disk) leaves a checkpoint folder with missing or cut-off
files. Resuming from it would crash, or worse, continue from half a state. The Trainer writes
trainer_state.json last, so its presence plus intact weight/optimizer files marks a finished save; anything
less is skipped with a warning and moved aside so the resumed run can save that step again.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import tempfile
import zipfile
from pathlib import Path

import yaml

from finetune.config import Config, resolved_dict
from finetune.errors import UserError
from finetune.files import check_output_dir
from finetune.launch import command_argv
from finetune.outputs.run_dir import checkpoints  # one lister for training and for reading runs
from finetune.train import distributed


def problem(ckpt: Path) -> str | None:
    """Why `ckpt` cannot be resumed from, or None when it is complete."""
    state = ckpt / "trainer_state.json"
    if not state.is_file():
        return "no trainer_state.json (the save did not finish)"
    try:
        json.loads(state.read_text(encoding="utf-8"))["global_step"]
    except (ValueError, KeyError, UnicodeDecodeError):
        return "trainer_state.json is cut off"
    names = ("adapter_model.safetensors", "model.safetensors", "unfrozen_parameters.safetensors")
    weights = [ckpt / n for n in names if (ckpt / n).is_file()]
    weights += sorted(ckpt.glob("model-*-of-*.safetensors"))  # a full fine-tune's shards
    if not weights:
        return "no model or adapter weights"
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
    has_optimizer = (
        (ckpt / "optimizer.pt").is_file()
        or any(ckpt.glob("global_step*"))  # DeepSpeed: its own folder
        or (ckpt / "optimizer.bin").is_file()  # FSDP, full state dict
        or any((ckpt / "optimizer_0").glob("*.distcp"))  # FSDP, sharded: one file per process
    )
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
    """Refuse a used output_dir unless asked; find the checkpoint to resume (none of the old run's with
    --overwrite). Nothing is moved or deleted here: see begin_output."""
    output_dir = Path(cfg.output_dir)
    continuing = resume or cfg.auto_resume_from_checkpoints or bool(cfg.resume_from_checkpoint)
    check_output_dir(output_dir, overwrite, continuing)
    if overwrite:
        check_can_replace(output_dir, cfg.resume_from_checkpoint)
    start = resume_point(
        output_dir,
        cfg.resume_from_checkpoint,
        resume,
        cfg.auto_resume_from_checkpoints and not overwrite,
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
    if not saved.is_file():
        return []
    before = yaml.safe_load(saved.read_text(encoding="utf-8")) or {}
    now = resolved_dict(cfg)
    ignore = {"finetune_versions", "resume_from_checkpoint", "auto_resume_from_checkpoints"}
    return sorted(k for k in now.keys() | before.keys() if k not in ignore and now.get(k) != before.get(k))


# ---------------------------------------------------------------- --overwrite
#
# The old run stays whole until the new one has validated its data, loaded its model and is about to write
# its first file (begin_output): a run that fails before that leaves the old folder exactly as it was. Then the
# old folder is moved aside in one rename (to a hidden sibling, same parent, so same file system), a fresh
# empty output_dir is made, and the old run is deleted. From that moment nothing of the old run (adapter,
# results, trainer_state, card) can be read next to the new run's files, interrupted or not. Killed between
# the rename and the delete, the old run survives as `.NAME.overwritten-*/NAME` beside output_dir.


def check_can_replace(output_dir: Path, resume_from: str | None) -> None:
    """Refuse --overwrite at once where begin_output could not move output_dir aside later."""
    if resume_from and Path(resume_from).resolve().is_relative_to(output_dir.resolve()):
        raise UserError(
            f"resume_from_checkpoint: {resume_from} is inside output_dir, which --overwrite replaces: "
            "drop --overwrite to continue that run"
        )
    if not (output_dir.is_dir() and any(output_dir.iterdir())):
        return
    real = Path(os.path.realpath(output_dir))
    if os.path.ismount(real) or Path.cwd().resolve().is_relative_to(real):
        why = "it is a mount point" if os.path.ismount(real) else "the current folder is inside it"
    elif not os.access(real.parent, os.W_OK | os.X_OK):
        why = f"{real.parent} is not writable"
    else:
        return
    raise UserError(
        f"output_dir: --overwrite moves {output_dir} aside to start afresh, but {why}: empty it yourself "
        "or choose another output_dir"
    )


def begin_output(output_dir: Path, replace: bool, is_main: bool) -> None:
    """Make output_dir ready for the run's first file; with `replace` (--overwrite) an empty new folder.

    Called by every process when the run starts writing; only the main process touches folders, the others
    wait here until it has (so no rank sees the old run's files after this).
    """
    if is_main:
        if replace:
            _replace_previous_run(Path(os.path.realpath(output_dir)))  # a symlink keeps pointing at it
        output_dir.mkdir(parents=True, exist_ok=True)
    distributed.barrier()


def _replace_previous_run(output_dir: Path) -> None:
    if not (output_dir.is_dir() and any(output_dir.iterdir())):
        return
    holder = Path(tempfile.mkdtemp(dir=output_dir.parent, prefix=f".{output_dir.name}.overwritten-"))
    try:
        output_dir.rename(holder / output_dir.name)  # one rename: the old run is whole here or there
    except OSError as exc:
        holder.rmdir()
        raise UserError(
            f"output_dir: cannot move {output_dir} aside to start afresh ({exc.strerror}): empty it yourself "
            "or choose another output_dir"
        ) from None
    output_dir.mkdir()
    shutil.rmtree(holder, ignore_errors=True)


def resume_command() -> str:
    """The command that continues this run: the one given, with --resume and without --overwrite."""
    argv = command_argv()  # with --num-processes etc. when finetune launched the processes itself
    if "train" not in argv:
        return "finetune train CONFIG --resume"
    kept = [a for a in argv if a not in ("--overwrite", "--resume", "--smoke")]
    return "finetune " + shlex.join(kept) + " --resume"
