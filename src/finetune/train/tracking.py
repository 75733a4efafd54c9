"""Weights & Biases for a run: the environment the Trainer's W&B callback reads, and a one-line refusal of an
online run without an API key before anything loads. W&B is optional; nothing is sent unless configured."""

from __future__ import annotations

import os

from finetune.config import Config
from finetune.errors import UserError


def _wandb_watch(value) -> str | None:
    if value is None:
        return None
    return "gradients" if value is True else "false" if value is False else value


def _wandb_log_model(value) -> str | None:
    if value is None:
        return None
    return "end" if value is True else "false" if value is False else value


def wandb_environment(cfg: Config, output_dir: str) -> dict[str, str]:
    """W&B settings are read by the Trainer's W&B callback and by wandb itself from the environment.

    Run files go to output_dir/wandb unless WANDB_DIR is already set, so a run's records stay together.
    """
    if not cfg.use_wandb:
        return {}
    env = {
        "WANDB_PROJECT": cfg.wandb_project,
        "WANDB_ENTITY": cfg.wandb_entity,
        "WANDB_WATCH": _wandb_watch(cfg.wandb_watch),
        "WANDB_LOG_MODEL": _wandb_log_model(cfg.wandb_log_model),
        "WANDB_MODE": cfg.wandb_mode,
        "WANDB_RUN_ID": cfg.wandb_run_id,
        "WANDB_RESUME": "allow" if cfg.wandb_run_id else None,
        "WANDB_DIR": None if os.environ.get("WANDB_DIR") else output_dir,
    }
    return {k: str(v) for k, v in env.items() if v is not None}


def check_wandb_credentials(cfg: Config) -> None:
    """An online W&B run without an API key fails now, in one line, not with a traceback after the model loads.

    Uses wandb's own lookup (WANDB_API_KEY, settings files, .netrc); on a terminal wandb may ask for the key.
    Offline and disabled runs need none; nothing is sent to the server here (verify=False).
    """
    mode = (cfg.wandb_mode or os.environ.get("WANDB_MODE") or "online").lower()
    if not cfg.use_wandb or mode in ("offline", "dryrun", "disabled") or os.environ.get("WANDB_DISABLED"):
        return
    import sys

    import wandb

    if not wandb.login(prompt=sys.stdin.isatty(), verify=False):
        raise UserError(
            "wandb_project: W&B has no API key on this machine: run `wandb login` or set WANDB_API_KEY, or set "
            "wandb_mode: offline (and `wandb sync` the run later)"
        )
