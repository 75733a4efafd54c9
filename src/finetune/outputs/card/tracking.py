"""The card's "Tracking" lines: where the run's curves are, linked when they are on a server.

Read from the run's facts (all_results.json: the MLflow run train/tracking.py started) and its config; a
tracking URI is shown without credentials or query string (train/tracking.redact_uri wrote it so).
"""

from __future__ import annotations

from finetune.outputs.run_dir import Run, fact


def tracking_section(run: Run) -> list[str]:
    cfg, lines = run.cfg, []
    run_id = fact(run, "mlflow_run_id")
    if run_id:
        uri = fact(run, "mlflow_tracking_uri") or ""
        experiment = fact(run, "mlflow_experiment_id")
        name = fact(run, "mlflow_experiment_name")
        where = f"experiment `{name or experiment}`, run `{run_id}`"
        if uri.startswith(("http://", "https://")):
            link = f"{uri.rstrip('/')}/#/experiments/{experiment}/runs/{run_id}"
            lines.append(f"- MLflow: [{where}]({link})")
        else:
            lines.append(f"- MLflow: {where} in `{uri}` (`mlflow ui --backend-store-uri {uri}`)")
    if getattr(cfg, "use_tensorboard", None) and (run.output_dir / "runs").is_dir():
        lines.append("- TensorBoard: event files in `runs/` (`tensorboard --logdir runs`)")
    if getattr(cfg, "trackio_on", False):
        project = fact(run, "trackio_project")
        space = cfg.trackio_space_id
        lines.append(
            f"- Trackio: project `{project}`"
            + (
                f", [Space {space}](https://huggingface.co/spaces/{space})"
                if space
                else " (local: `trackio show`)"
            )
        )
    return ["### Tracking", "", *lines, ""] if lines else []
