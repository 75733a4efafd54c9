"""The trackers of a run. Weights & Biases: the environment the Trainer's W&B callback reads, and a one-line
refusal of an online run without an API key before anything loads. MLflow, TensorBoard and Trackio: the HF
Trainer's own callbacks (`report_to`, arguments.py), a one-line refusal when a package is missing, and the MLflow
run they log into. All optional; nothing is sent unless configured, and secrets stay out (the Trainer's
arguments mask `*_token`; the card shows tracking URIs without credentials).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from contextlib import contextmanager
from pathlib import Path

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
    import wandb

    if not wandb.login(prompt=sys.stdin.isatty(), verify=False):
        raise UserError(
            "wandb_project: W&B has no API key on this machine: run `wandb login` or set WANDB_API_KEY, or set "
            "wandb_mode: offline (and `wandb sync` the run later)"
        )


# ---------------------------------------------------------------- MLflow, TensorBoard, Trackio (report_to)

_PACKAGES = {  # report_to name -> (the module its HF callback imports, the config key that turned it on, install)
    "mlflow": ("mlflow", "use_mlflow", "pip install 'finetune[tracking]'"),
    "tensorboard": ("tensorboard", "use_tensorboard", "pip install 'finetune[tracking]'"),
    "trackio": ("trackio", "use_trackio", "pip install trackio"),
}
_DB_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")  # MLflow's SQL stores: SQLAlchemy + alembic


def check_trackers(cfg: Config) -> None:
    """A tracker whose package is missing stops the run now, in one line (the HF callback would raise a
    RuntimeError only when the Trainer is built, after the model has loaded; MLflow's SQL store only when
    the run starts)."""
    problems = [
        f"{_PACKAGES[name][1]}: {name} is not installed ({_PACKAGES[name][2]})"
        for name in cfg.report_to
        if importlib.util.find_spec(_PACKAGES[name][0]) is None
    ]
    uri = cfg.mlflow_tracking_uri or ""
    if cfg.mlflow_on and uri.split(":", 1)[0].split("+", 1)[0] in _DB_SCHEMES:
        missing = [m for m in ("sqlalchemy", "alembic") if importlib.util.find_spec(m) is None]
        if missing:
            problems.append(
                f"mlflow_tracking_uri: a database store needs {' and '.join(missing)} "
                "(pip install 'finetune[tracking]')"
            )
    if problems:
        raise UserError(problems)


def tracker_environment(cfg: Config) -> dict[str, str]:
    """What the HF callbacks read from the environment beyond TrainingArguments."""
    if cfg.mlflow_on and cfg.hf_mlflow_log_artifacts:
        return {"HF_MLFLOW_LOG_ARTIFACTS": "1"}
    return {}


def redact_uri(uri: str | None) -> str | None:
    """A tracking URI as it may be shown: without a user:password@ part or a query string (tokens travel there)."""
    if not uri or "://" not in uri:
        return uri
    scheme, rest = uri.split("://", 1)
    host, slash, path = rest.partition("/")
    return f"{scheme}://{host.rpartition('@')[2]}{slash}{path.split('?', 1)[0]}"


@contextmanager
def mlflow_run(cfg: Config, is_main: bool):
    """The MLflow run the Trainer's MLflowCallback logs into, started here rather than by the callback so it
    gets `mlflow_run_name` (the callback would use the Trainer's run_name) and the configured URI even when an
    earlier run in this process set another (mlflow keeps the URI process-wide, and the callback only sets it
    when none is set). Yields the facts the card links to (None without MLflow), ends the run afterwards."""
    if not (cfg.mlflow_on and is_main):
        yield None
        return
    import mlflow

    previous_uri = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    if cfg.mlflow_tracking_uri:
        mlflow.set_tracking_uri(cfg.mlflow_tracking_uri)
    try:
        experiment = mlflow.set_experiment(cfg.mlflow_experiment_name) if cfg.mlflow_experiment_name else None
        run = mlflow.start_run(run_name=cfg.mlflow_run_name or cfg.run_name)
        status = "FAILED"
        try:
            yield {
                "mlflow_run_id": run.info.run_id,
                "mlflow_experiment_id": run.info.experiment_id,
                "mlflow_experiment_name": experiment.name if experiment else None,
                "mlflow_tracking_uri": redact_uri(mlflow.get_tracking_uri()),
            }
            status = "FINISHED"
        except (KeyboardInterrupt, SystemExit):  # Ctrl-C, or a signal's checkpoint-and-exit
            status = "KILLED"
            raise
        finally:
            mlflow.end_run(status)
    finally:
        if cfg.mlflow_tracking_uri:
            mlflow.set_tracking_uri(previous_uri)  # None: back to MLflow's default lookup


def trainer_arguments(cfg: Config) -> dict:
    """TrainingArguments of the trackers: which integrations run, the run's name, Trackio's project.

    trackio_run_name names the run for every tracker that has no name of its own (TrainingArguments has one
    run_name); Trackio never uploads a static copy after training unless trackio_space_id asks for a Space.
    """
    report = (["wandb"] if cfg.use_wandb else []) + cfg.report_to
    kwargs = {
        "report_to": report or "none",
        "run_name": cfg.trackio_run_name
        if cfg.trackio_on and cfg.trackio_run_name and not cfg.wandb_name
        else cfg.run_name,
    }
    if cfg.trackio_on:
        kwargs["project"] = cfg.trackio_project_name or Path(cfg.output_dir).resolve().name
        kwargs["trackio_space_id"] = cfg.trackio_space_id
        kwargs["trackio_static_space_id"] = False
    return kwargs
