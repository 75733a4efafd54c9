"""`finetune train CONFIG --smoke`: the same recipe on a tiny random model, a few rows, a few steps.

A user checks a config (data formatting, prompt template, adapter settings, outputs) in seconds on a
laptop before renting GPUs. Everything that needs the real model or other machines is replaced, and
each replacement is said out loud: the hub base model (it may be unreachable offline) by `finetune.model.tiny`,
output_dir and the data cache by a temp folder, DeepSpeed, W&B and hub pushes switched off.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from finetune.config import Config
from finetune.model.tiny import write_tiny_model

SMOKE_STEPS = 2
SMOKE_EVAL_ROWS = 4


def smoke_config(cfg: Config, notes: list[str]) -> Config:
    """The same recipe on a tiny random model, in a temp folder, for a few steps; no DeepSpeed, no W&B."""
    root = Path(tempfile.mkdtemp(prefix="finetune-smoke-"))
    tiny = write_tiny_model(root / "tiny-model")
    update = {
        "base_model": str(tiny),
        "base_model_config": None,
        "tokenizer_config": None,
        "revision_of_model": None,
        "trust_remote_code": False,
        "lora_model_dir": None,
        "output_dir": str(root / "output"),
        "dataset_prepared_path": str(root / "prepared"),
        "max_steps": SMOKE_STEPS,
        "deepspeed": None,
        "wandb_project": None,
        "resume_from_checkpoint": None,
        "auto_resume_from_checkpoints": False,
        "hub_model_id": None,
        "hub_strategy": None,
        "hub_private_repo": None,
        "hub_revision": None,
    }
    notes.append(
        f"smoke: base_model {cfg.base_model} -> a tiny random Llama ({tiny}); its tokenizer formats the data"
    )
    notes.append(f"smoke: output_dir {cfg.output_dir} -> {root / 'output'}; max_steps -> {SMOKE_STEPS}")
    if cfg.pad_to_sequence_len and not cfg.sample_packing:
        # padding every row to e.g. 16,384 tokens turns seconds into minutes on a CPU; which rows are kept
        # (sequence_len, excess_length_strategy) is unchanged
        update["pad_to_sequence_len"] = False
        notes.append(
            f"smoke: pad_to_sequence_len is off (rows are not padded to {cfg.sequence_len:,} tokens)"
        )
    if cfg.lora_model_dir:
        notes.append(f"smoke: lora_model_dir {cfg.lora_model_dir} is not used (it fits the real model only)")
    if cfg.deepspeed:
        notes.append("smoke: deepspeed is off (one process)")
    if cfg.use_wandb:
        notes.append("smoke: W&B is off")
    if cfg.hub_model_id:
        notes.append(f"smoke: nothing is pushed to the hub ({cfg.hub_model_id})")
    return cfg.model_copy(update=update)


def smoke_rows(cfg: Config, train_set, eval_set, notes: list[str]):
    """Just enough rows for the smoke steps (and a small evaluation)."""
    want = cfg.micro_batch_size * cfg.gradient_accumulation_steps * SMOKE_STEPS
    n_train = min(len(train_set), want)
    train_set = train_set.select(range(n_train))
    if eval_set is not None:
        eval_set = eval_set.select(range(min(len(eval_set), SMOKE_EVAL_ROWS)))
    notes.append(
        f"smoke: {n_train} training rows, {len(eval_set) if eval_set is not None else 0} evaluation rows"
    )
    return train_set, eval_set
