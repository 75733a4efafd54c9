"""Pushed checkpoints resume: a 2-process FSDP run and a DeepSpeed ZeRO-2 run, stopped after a checkpoint and
pushed with `--checkpoints` to the stand-in hub (tests/hub_standin.py), are downloaded into a fresh folder with
huggingface_hub's `snapshot_download` and continued there with `--resume` to the uninterrupted run's adapter.
So the push allow-list (outputs/push_files.py) holds everything each engine's resume reads: FSDP's sharded
`pytorch_model_fsdp_0/` and `optimizer_0/`, DeepSpeed's `global_stepN/` and `latest`, one RNG state per process.

Also here, on the same runs (no extra training): `hub_strategy: checkpoint` pushes each save into
`last-checkpoint/`, and a later save replaces the earlier one there (its stale files deleted in the same commit)
instead of piling DeepSpeed's `global_step2/` beside `global_step4/`.

Launches reuse test_distributed's helpers (timeouts that kill the whole process group): two a case. The fast
tests at the end check the same allow-list and replacement on checkpoint folders laid out by hand: FSDP's
FULL_STATE_DICT files, which the sharded runs above do not write, and a re-pushed folder's stale files.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from finetune import config
from finetune.outputs import push, push_files
from finetune.train import hub_push
from launching import FSDP, ZERO, adapter, launch, losses, run_cfg

STEPS, STOPPED = 4, 2
ENGINES = {"fsdp": FSDP, "zero2": {"deepspeed": ZERO[2]}}
# where each engine keeps the state --resume reads (besides the adapter, scheduler and trainer state)
ENGINE_STATE = {
    "fsdp": ("pytorch_model_fsdp_0/", "optimizer_0/", "rng_state_0.pth", "rng_state_1.pth"),
    "zero2": (f"global_step{STOPPED}/", "latest", "rng_state_0.pth", "rng_state_1.pth"),
}


def interrupted_copy(out: Path, dest: Path) -> Path:
    """What a run stopped after saving step STOPPED leaves: its config.yml, metrics and that checkpoint (the
    uninterrupted run wrote the same checkpoint at that step)."""
    dest.mkdir()
    for name in ("config.yml", "metrics.jsonl"):
        shutil.copy(out / name, dest / name)
    shutil.copytree(out / f"checkpoint-{STOPPED}", dest / f"checkpoint-{STOPPED}")
    return dest


def check_last_checkpoint_is_replaced(cfg: dict, out: Path, hub) -> None:
    """Two saves pushed as hub_strategy `checkpoint` pushes them: the hub's last-checkpoint/ ends up exactly the
    second save's files."""
    run = config.validate({**cfg, "hub_model_id": "me/live", "hub_strategy": "checkpoint"})
    for step in (STOPPED, STEPS):
        files = hub_push.save_files(run, out, out / f"checkpoint-{step}")
        push.push("me/live", files, message=f"Training in progress, step {step}")
    wanted = push_files.checkpoint_files(out / f"checkpoint-{STEPS}", "last-checkpoint/")
    on_hub = {p: b for p, b in hub.pushed("me/live").items() if p.startswith("last-checkpoint/")}
    assert set(on_hub) == {u.path_in_repo for u in wanted}
    assert all(on_hub[u.path_in_repo] == u.read() for u in wanted)
    assert not any(f"global_step{STOPPED}/" in p for p in hub.pushed("me/live"))
    if "deepspeed" in cfg:  # the stale files went in the second save's commit
        assert any(p.startswith(f"last-checkpoint/global_step{STOPPED}/") for p in hub.commits[-1].deleted)


@pytest.mark.slow
@pytest.mark.parametrize("engine", list(ENGINES))
def test_pushed_checkpoint_resumes_to_the_uninterrupted_adapter(
    engine, tiny_model_dir, tmp_path, write_config, hub_env
):
    from huggingface_hub import snapshot_download

    from finetune.outputs.push import push_command

    over = dict(max_steps=STEPS, save_strategy="steps", save_steps=STOPPED, **ENGINES[engine])
    cfg = run_cfg(tiny_model_dir, tmp_path, **over)
    launch([["train", str(write_config(cfg, "whole.yaml")), "--num-processes", "2"]], tmp_path)
    out = tmp_path / "out"
    check_last_checkpoint_is_replaced(cfg, out, hub_env)

    stopped = interrupted_copy(out, tmp_path / "stopped")
    files = {u.path_in_repo for u in push_command(stopped, "me/stopped", checkpoints=True)}
    for name in ENGINE_STATE[engine]:
        assert any(p.startswith(f"checkpoint-{STOPPED}/{name}") for p in files), name
    assert not any("training_args.bin" in p for p in files)

    fresh = tmp_path / "downloaded"
    snapshot_download("me/stopped", local_dir=fresh)
    assert (fresh / f"checkpoint-{STOPPED}" / "trainer_state.json").is_file()
    resumed = write_config({**cfg, "output_dir": str(fresh)}, "resumed.yaml")
    (log,) = launch([["train", str(resumed), "--num-processes", "2", "--resume"]], tmp_path)
    assert "resuming from" in log  # --resume: from the pushed checkpoint (it refuses to start afresh)
    assert losses(fresh)[-2:] == pytest.approx(losses(out)[-2:], abs=1e-6, rel=0)
    whole, mine = adapter(out), adapter(fresh)
    assert mine.keys() == whole.keys()
    for key, value in mine.items():
        assert (value - whole[key]).abs().max() <= 1e-6, key


# ---------------------------------------------------------------- fast: checkpoint folders laid out by hand


def fake_checkpoint(folder: Path, names: list[str]) -> Path:
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(f"{folder.name}/{name}".encode())
    return folder


def test_fsdp_full_state_dict_files_are_pushed_but_not_training_args(tmp_path):
    kept = ["adapter_model.safetensors", "pytorch_model_fsdp.bin", "optimizer.bin", "optimizer_1.bin",
            "pytorch_model_fsdp_1.bin", "scheduler.pt", "rng_state_0.pth", "rng_state_1.pth", "trainer_state.json",
            "pytorch_model_fsdp_0/__0_0.distcp", "pytorch_model_fsdp_0/.metadata", "optimizer_0/__1_0.distcp"]  # fmt: skip
    left = ["training_args.bin", "README.md", "notes/pytorch_model_fsdp.bin", "optimizer_x/a.distcp"]
    ckpt = fake_checkpoint(tmp_path / "checkpoint-4", kept + left)
    sent = {u.path_in_repo for u in push_files.checkpoint_files(ckpt, "checkpoint-4/")}
    assert sent == {f"checkpoint-4/{name}" for name in kept}


def test_a_repushed_checkpoint_folder_replaces_the_one_on_the_hub(tmp_path, hub_env):
    first = fake_checkpoint(tmp_path / "checkpoint-2", ["latest", "global_step2/mp_rank_00_model_states.pt",
                                                        "adapter_model.safetensors", "scaler.pt"])  # fmt: skip
    second = fake_checkpoint(tmp_path / "checkpoint-4", ["latest", "global_step4/mp_rank_00_model_states.pt",
                                                         "adapter_model.safetensors"])  # fmt: skip
    keep = push_files.Upload("README.md", b"the card, outside the replaced folder")
    for ckpt in (first, second):
        files = [keep, *push_files.checkpoint_files(ckpt, "last-checkpoint/")]
        push.push("me/live", files, message=ckpt.name)
    assert hub_env.pushed("me/live") == {
        "README.md": keep.read(),
        "last-checkpoint/latest": b"checkpoint-4/latest",
        "last-checkpoint/global_step4/mp_rank_00_model_states.pt": b"checkpoint-4/global_step4/mp_rank_00_model_states.pt",
        "last-checkpoint/adapter_model.safetensors": b"checkpoint-4/adapter_model.safetensors",
    }  # fmt: skip
    assert sorted(hub_env.commits[-1].deleted) == [
        "last-checkpoint/global_step2/mp_rank_00_model_states.pt",
        "last-checkpoint/scaler.pt",
    ]  # in the same commit as the new files
