"""MLflow and TensorBoard through the HF Trainer's own callbacks (axolotl's keys): a run on the tiny model leaves
an MLflow run (sqlite, no server) and TensorBoard event files whose losses are metrics.jsonl's, read back with each
tool's own reader; no planted secret reaches either; the card says where they are. Plus the keys' checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import INST_FORMAT, ROOT
from finetune import config
from finetune.errors import UserError
from finetune.train import tracking

QA = ROOT / "examples" / "finance_qa.jsonl"
SECRETS = {
    "HF_TOKEN": "hf_planted" + "x" * 30,
    "WANDB_API_KEY": "planted-wandb-" + "k" * 28,
    "MLFLOW_TRACKING_TOKEN": "planted-mlflow-" + "t" * 20,
}


def raw_cfg(tmp_path: Path, tiny_model_dir: Path, **over) -> dict:
    return {
        "base_model": str(tiny_model_dir), "adapter": "lora", "lora_r": 8, "lora_alpha": 16,
        "lora_target_linear": True, "datasets": [{"path": str(QA), "type": INST_FORMAT}], "val_set_size": 4,
        "sequence_len": 256, "dataset_prepared_path": str(tmp_path / "prepared"), "dataset_processes": 1,
        "output_dir": str(tmp_path / "out"), "micro_batch_size": 4, "max_steps": 4, "eval_steps": 2,
        "learning_rate": 0.01, "logging_steps": 1, "seed": 7, **over,
    }  # fmt: skip


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_mlflow_and_tensorboard_log_the_losses_of_metrics_jsonl(tiny_model_dir, tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="pip install -e '.[tracking]'")
    pytest.importorskip("tensorboard", reason="pip install -e '.[tracking]'")
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from finetune import train

    for key, value in SECRETS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)  # anything MLflow writes beside its database stays in the test's folder
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = config.validate(
        raw_cfg(tmp_path, tiny_model_dir, use_mlflow=True, mlflow_tracking_uri=uri,
                mlflow_experiment_name="finetune-tests", mlflow_run_name="tiny-tracked", use_tensorboard=True)
    )  # fmt: skip
    out = Path(train.run(cfg))
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_loss = [(e["step"], e["loss"]) for e in history if "loss" in e]
    eval_loss = [(e["step"], e["eval_loss"]) for e in history if "eval_loss" in e]
    assert len(train_loss) == 4 and len(eval_loss) == 2

    # MLflow, read back with its own client
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("finetune-tests")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "tiny-tracked" and run.info.status == "FINISHED"
    for name, expected in (("loss", train_loss), ("eval_loss", eval_loss)):
        logged = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, name))
        assert logged == expected, name
    assert run.data.params["learning_rate"] == "0.01"  # the Trainer's arguments, as params

    # TensorBoard, read back with its own event reader (scalars are stored as float32)
    (logdir,) = {p.parent for p in (out / "runs").rglob("events.out.tfevents.*")}
    events = EventAccumulator(str(logdir))
    events.Reload()
    import numpy as np

    for tag, expected in (("train/loss", train_loss), ("eval/loss", eval_loss)):
        logged = [(e.step, e.value) for e in events.Scalars(tag)]
        assert logged == [(step, float(np.float32(value))) for step, value in expected], tag

    # no planted secret in the MLflow database, the event files, or anything else the run wrote
    written = [tmp_path / "mlflow.db", *out.rglob("*"), *tmp_path.glob("ml*/**/*")]
    for value in SECRETS.values():
        for path in written:
            if path.is_file():
                assert value.encode() not in path.read_bytes(), path

    card = (out / "README.md").read_text()
    assert f"- MLflow: experiment `finetune-tests`, run `{run.info.run_id}` in `{uri}`" in card
    assert "- TensorBoard: event files in `runs/`" in card


def test_tracker_keys(tmp_path, tiny_model_dir):
    def cfg_of(**over):
        return config.validate(raw_cfg(tmp_path, tiny_model_dir, **over))

    both = cfg_of(use_mlflow=True, use_tensorboard=True, use_wandb=False, trackio_project_name="p")
    assert both.report_to == ["mlflow", "tensorboard", "trackio"]
    args = tracking.trainer_arguments(both)
    assert args["report_to"] == ["mlflow", "tensorboard", "trackio"] and args["project"] == "p"
    assert cfg_of(mlflow_tracking_uri="sqlite:///x.db").report_to == ["mlflow"]  # a URI turns it on
    assert cfg_of(mlflow_tracking_uri="sqlite:///x.db", use_mlflow=False).report_to == []
    assert tracking.trainer_arguments(cfg_of())["report_to"] == "none"
    assert tracking.redact_uri("https://me:pw@mlflow.example/x?token=1") == "https://mlflow.example/x"

    with pytest.raises(UserError) as bad:
        cfg_of(mlflow_tracking_uri="https://me:secretpw@mlflow.example")
    text = "\n".join(bad.value.problems)
    assert "secretpw" not in text and "mlflow_tracking_uri: credentials in the URI" in text
    with pytest.raises(UserError) as bad:
        cfg_of(mlflow_run_name="r", trackio_run_name="t", use_tensorboard=True)
    assert bad.value.problems == [
        "<config>: mlflow_run_name: needs use_mlflow: set it, or remove this key",
        "<config>: trackio_run_name: needs use_trackio: set it, or remove this key",
    ]
    with pytest.raises(UserError, match="lm_eval_limit: needs lm_eval_tasks"):
        cfg_of(lm_eval_limit=3)
