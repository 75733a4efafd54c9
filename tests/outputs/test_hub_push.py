"""Pushing while training (train/hub_push.py): what each hub_strategy sends, commit by commit, to the stand-in hub
(tests/hub_standin.py), and a hub that refuses never costs the local run."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import INST_FORMAT
from finetune import config, train
from finetune.errors import UserError
from hub_standin import TOKEN

QA = Path(__file__).resolve().parents[2] / "examples" / "finance_qa.jsonl"
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

TOKENIZER = {"chat_template.jinja", "tokenizer.json", "tokenizer_config.json"}
ADAPTER = {"adapter_config.json", "adapter_model.safetensors"}
# a checkpoint save: the checkpoint's adapter, tokenizer and state, config.yml and a card of the run so far
AT_SAVE = ADAPTER | TOKENIZER | {"trainer_state.json", "config.yml", "README.md"}
AT_END = ADAPTER | TOKENIZER | {
    "README.md", "config.yml", "loss.png", "all_results.json", "train_results.json", "trainer_state.json",
}  # fmt: skip
RESUME = ADAPTER | TOKENIZER | {"trainer_state.json", "optimizer.pt", "scheduler.pt", "rng_state.pth"}


def run(tiny_model_dir, tmp_path, **hub_keys) -> Path:
    cfg = config.validate({
        "base_model": str(tiny_model_dir), "adapter": "lora", "lora_r": 4, "lora_target_linear": True,
        "datasets": [{"path": str(QA), "type": INST_FORMAT}], "sequence_len": 128,
        "dataset_prepared_path": str(tmp_path / "prepared"), "dataset_processes": 1,
        "output_dir": str(tmp_path / "out"), "micro_batch_size": 4, "max_steps": 4, "save_steps": 2,
        "learning_rate": 0.01, "seed": 7, "hub_model_id": "me/run", **hub_keys,
    })  # fmt: skip
    return train.run(cfg)


def files_of(commits) -> list[set]:
    return [set(c.files) for c in commits]


def test_end_pushes_once_after_the_final_save(tiny_model_dir, tmp_path, hub_env):
    out = run(tiny_model_dir, tmp_path, hub_strategy="end")
    assert [c.message for c in hub_env.commits] == ["End of training"]
    assert files_of(hub_env.commits) == [AT_END]
    assert hub_env.repos["me/run"].private is True
    assert hub_env.pushed("me/run")["README.md"] == (out / "README.md").read_bytes()  # the final card
    assert hub_env.leaks(TOKEN) == []


def test_every_save_pushes_the_adapter_at_each_checkpoint(tiny_model_dir, tmp_path, hub_env):
    out = run(tiny_model_dir, tmp_path, hub_private_repo=False, hub_revision="wip")  # every_save: the default
    assert [c.message for c in hub_env.commits] == [
        "Training in progress, step 2", "Training in progress, step 4", "End of training",
    ]  # fmt: skip
    assert files_of(hub_env.commits) == [AT_SAVE, AT_SAVE, AT_END]
    assert {c.revision for c in hub_env.commits} == {"wip"} and hub_env.repos["me/run"].private is False
    step2 = hub_env.commits[0].files
    assert (
        step2["adapter_model.safetensors"]
        == (out / "checkpoint-2" / "adapter_model.safetensors").read_bytes()
    )
    assert step2["README.md"].startswith(b"---\n") and b"library_name: peft" in step2["README.md"]  # our card
    assert hub_env.leaks(TOKEN) == []


@pytest.mark.parametrize("strategy", ["checkpoint", "all_checkpoints"])
def test_checkpoint_strategies_also_push_checkpoints(tiny_model_dir, tmp_path, hub_env, strategy):
    run(tiny_model_dir, tmp_path, hub_strategy=strategy)
    saves = files_of(hub_env.commits[:2])
    folders = ["last-checkpoint"] * 2 if strategy == "checkpoint" else ["checkpoint-2", "checkpoint-4"]
    for files, folder in zip(saves, folders, strict=True):  # no training_args.bin, no stub card inside
        assert files == AT_SAVE | {f"{folder}/{name}" for name in RESUME}
    assert files_of(hub_env.commits[2:]) == [AT_END]


def test_a_refusing_hub_never_costs_the_local_run(tiny_model_dir, tmp_path, hub_env, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", "hf_notTheRightToken")  # the stand-in answers 401
    with pytest.raises(UserError) as err:
        run(tiny_model_dir, tmp_path, hub_revision="wip")
    out = tmp_path / "out"
    assert err.value.problems == [
        "hub push failed: me/run: the hub refused the token (401 Unauthorized): check HF_TOKEN or `hf auth login`",
        f"the run is complete in {out}; push it with: finetune push {out} me/run --revision wip",
    ]
    for name in AT_END:  # trained to the end and saved in full
        assert (out / name).is_file(), name
    warnings = [line for line in capsys.readouterr().err.splitlines() if "hub push at step" in line]
    assert len(warnings) == 2 and all("401 Unauthorized" in w for w in warnings)
    assert hub_env.commits == []


def test_train_without_a_token_trains_then_exits_2(tiny_model_dir, tmp_path, standin, write_config):
    """`finetune train` as a user runs it (HF_ENDPOINT set before huggingface_hub is imported): no token is said
    at the start, the run trains and saves in full, and the exit code says the push did not happen."""
    import os
    import subprocess
    import sys

    out = tmp_path / "out"
    path = write_config({
        "base_model": str(tiny_model_dir), "adapter": "lora", "lora_r": 4,
        "datasets": [{"path": str(QA), "type": INST_FORMAT}], "sequence_len": 128,
        "dataset_prepared_path": str(tmp_path / "prepared"), "output_dir": str(out), "micro_batch_size": 4,
        "max_steps": 2, "hub_model_id": "me/run", "hub_strategy": "end",
    })  # fmt: skip
    env = {**os.environ, "HF_ENDPOINT": standin.url, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "home")}
    env.pop("HF_TOKEN", None)
    result = subprocess.run(
        [sys.executable, "-m", "finetune.cli", "train", str(path)], capture_output=True, text=True, env=env
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert any("warning: hub_model_id: no Hugging Face token" in line for line in lines)
    assert lines[-2:] == [
        "hub push failed: no Hugging Face token: set HF_TOKEN or run `hf auth login` (a token with write access)",
        f"the run is complete in {out}; push it with: finetune push {out} me/run",
    ]
    assert (out / "adapter_model.safetensors").is_file() and (out / "README.md").is_file()
    assert standin.requests == []
