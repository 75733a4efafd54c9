"""The keys of what reports on a run besides W&B: lm-evaluation-harness at the end of training (axolotl's
`lm_eval_tasks` / `lm_eval_batch_size`, its LMEvalPlugin's keys) and the HF Trainer's own tracker integrations
(MLflow, TensorBoard, Trackio: `report_to`), with axolotl's names.

Each tracker is optional and local-first: nothing leaves the machine unless its key names a server. The
trackers' own packages are optional extras (`pip install 'finetune[tracking]'`, lm-eval: `finetune[eval]`);
a run that asks for one that is not installed stops before anything loads (train/tracking.py).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from finetune.config.datasets import StrictModel
from finetune.config.keys_model import Positive


class TrackingKeys(StrictModel):
    # --- lm-evaluation-harness after training
    lm_eval_tasks: list[str] | None = Field(
        None,
        description="lm-evaluation-harness tasks to score the trained model on when training ends (as `finetune eval OUTPUT_DIR --tasks ...` does; results in eval_results.json under `lm_eval` and in the card). Any task name lm-eval knows, a task of lm_eval_include_path, or a task YAML file; names are checked before training starts. Needs `pip install 'finetune[eval]'`; costs one evaluation pass per task (use lm_eval_limit for a quick look).",
    )
    lm_eval_batch_size: Positive | None = Field(
        None, description="lm_eval_tasks: rows per forward pass (default 8, as axolotl)."
    )
    lm_eval_include_path: str | None = Field(
        None,
        description="lm_eval_tasks: a folder of your own task YAMLs (lm-eval's --include_path), e.g. tasks on local data files.",
    )
    lm_eval_limit: Positive | None = Field(
        None, description="lm_eval_tasks: score only the first N rows of each task (lm-eval's --limit)."
    )
    lm_eval_num_fewshot: int | None = Field(
        None, ge=0, description="lm_eval_tasks: few-shot examples per prompt (default: each task's own)."
    )

    # --- trackers (the HF Trainer's integrations; W&B: wandb_* above). Several may run at once.
    use_mlflow: bool | None = Field(
        None,
        description="Log the run to MLflow (params: the Trainer's arguments, tokens redacted; metrics: every logged loss and learning rate). Needs mlflow (`finetune[tracking]`).",
    )
    mlflow_tracking_uri: str | None = Field(
        None,
        description="Where MLflow writes: a local folder or `sqlite:///runs.db` needs no server; `http(s)://...` a tracking server (credentials from MLFLOW_TRACKING_USERNAME/PASSWORD or TOKEN, never the YAML). Default: MLflow's own (MLFLOW_TRACKING_URI, else ./mlruns).",
    )
    mlflow_experiment_name: str | None = Field(
        None, description="MLflow experiment, created if missing (default: MLflow's Default)."
    )
    mlflow_run_name: str | None = Field(
        None, description="MLflow run name (default: wandb_name, else the output folder's name)."
    )
    hf_mlflow_log_artifacts: bool | None = Field(
        None,
        description="Also copy each saved checkpoint into MLflow's artifact store (slow and large: for a remote store).",
    )
    use_tensorboard: bool | None = Field(
        None,
        description="Write TensorBoard event files (loss, learning rate, eval metrics) into output_dir/runs/; view with `tensorboard --logdir OUTPUT_DIR/runs`. Needs tensorboard (`finetune[tracking]`).",
    )
    use_trackio: bool | None = Field(
        None,
        description="Log the run to Trackio (local-first: a SQLite database under ~/.cache/huggingface/trackio or TRACKIO_DIR; `trackio show` opens it). On when trackio_project_name is set. Needs trackio.",
    )
    trackio_project_name: str | None = Field(
        None, description="Trackio project (default: the output folder's name when use_trackio is on)."
    )
    trackio_run_name: str | None = Field(
        None, description="Trackio run name (default: wandb_name, else the output folder's name)."
    )
    trackio_space_id: str | None = Field(
        None,
        description="Also sync Trackio to this Hugging Face Space (`name` or `org/name`; the token comes from HF_TOKEN). Default: local only.",
    )

    @field_validator("mlflow_tracking_uri")
    @classmethod
    def _no_password_in_uri(cls, v: str | None) -> str | None:
        """A password in the URI would be saved in config.yml and logged: credentials belong in the environment."""
        if v and "://" in v and "@" in v.split("://", 1)[1].split("/", 1)[0]:
            raise ValueError(
                "credentials in the URI would be saved with the run: give the bare URI and set "
                "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) instead"
            )
        return v

    @property
    def mlflow_on(self) -> bool:
        """use_mlflow, or a tracking URI given (axolotl turns MLflow on for one too); `use_mlflow: false` wins."""
        return self.use_mlflow is not False and bool(self.use_mlflow or self.mlflow_tracking_uri)

    @property
    def trackio_on(self) -> bool:
        """use_trackio, or a Trackio project named (as axolotl reads it); `use_trackio: false` wins."""
        return self.use_trackio is not False and bool(self.use_trackio or self.trackio_project_name)

    @property
    def report_to(self) -> list[str]:
        """The HF Trainer integrations this config turns on (W&B beside them: Config.use_wandb)."""
        return [
            name
            for name, on in (
                ("mlflow", self.mlflow_on),
                ("tensorboard", self.use_tensorboard),
                ("trackio", self.trackio_on),
            )
            if on
        ]


def tracking_checks(cfg: TrackingKeys) -> list[tuple[tuple, str]]:
    """Keys that mean nothing without the one that turns their feature on, reported at the key that is set;
    and an include path that is not a folder (lm-eval would only say the task is unknown)."""
    problems = []
    needs = (
        ("lm_eval_tasks", bool(cfg.lm_eval_tasks), ("lm_eval_batch_size", "lm_eval_include_path", "lm_eval_limit", "lm_eval_num_fewshot")),
        ("use_mlflow", cfg.mlflow_on, ("mlflow_experiment_name", "mlflow_run_name", "hf_mlflow_log_artifacts")),
        ("use_trackio", cfg.trackio_on, ("trackio_run_name", "trackio_space_id")),
    )  # fmt: skip
    for switch, on, keys in needs:
        problems += [
            ((key,), f"needs {switch}: set it, or remove this key")
            for key in keys
            if not on and getattr(cfg, key) not in (None, False)
        ]
    if cfg.lm_eval_include_path and not Path(cfg.lm_eval_include_path).expanduser().is_dir():
        problems.append((("lm_eval_include_path",), f"folder not found: {cfg.lm_eval_include_path}"))
    if cfg.lm_eval_tasks and getattr(cfg, "reward_model", False):
        problems.append(
            (
                ("lm_eval_tasks",),
                "a reward model scores text and does not generate: lm-eval needs a language model",
            )
        )
    if cfg.lm_eval_tasks is not None and not all(t.strip() for t in cfg.lm_eval_tasks):
        problems.append((("lm_eval_tasks",), "an empty task name"))
    return problems
