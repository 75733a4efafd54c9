"""`finetune train --num-processes/--nnodes`: the torchrun command it becomes, and its one-line refusals.

The launch itself (processes training together) is tested in test_distributed.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from finetune import launch
from finetune.errors import UserError

ROOT = Path(__file__).resolve().parents[2]


def test_children_get_the_command_without_the_launch_flags():
    argv = ["train", "cfg.yaml", "--num-processes", "2", "--nnodes=2", "--node-rank", "1", "--overwrite",
            "--master-addr", "10.0.0.1", "--master-port=29501", "--set", "lora_r=4"]  # fmt: skip
    assert launch.strip_launch_flags(argv) == ["train", "cfg.yaml", "--overwrite", "--set", "lora_r=4"]


def test_deepspeed_launchers_local_rank_argument_is_dropped():
    argv = ["--local_rank=1", "train", "cfg.yaml", "--local-rank", "0", "--set", "x=1"]
    assert launch.without_local_rank(argv) == ["train", "cfg.yaml", "--set", "x=1"]


def test_torchrun_command_single_node_gets_a_free_port_multi_node_the_shared_default():
    one = launch.torchrun_command(["train", "c.yaml", "--num-processes", "4"], 4, 1, 0, "127.0.0.1", None)
    assert one[1:3] == ["-m", "torch.distributed.run"]
    assert one[-4:] == ["-m", "finetune.cli", "train", "c.yaml"]
    assert "--nproc_per_node=4" in one and "--nnodes=1" in one
    port = int(next(a for a in one if a.startswith("--master_port=")).split("=")[1])
    assert 0 < port < 65536
    many = launch.torchrun_command(["train", "c.yaml"], 8, 2, 1, "10.0.0.1", None)
    assert {"--nnodes=2", "--node_rank=1", "--master_addr=10.0.0.1", "--master_port=29500"} <= set(many)
    assert "--master_port=29511" in launch.torchrun_command([], 1, 2, 0, "h", 29511)


@pytest.mark.parametrize(
    "flags, message",
    [
        ((0, 1, 0), "--num-processes: must be >= 1 (got 0)"),
        ((1, 0, 0), "--nnodes: must be >= 1 (got 0)"),
        ((2, 2, 2), "--node-rank: must be between 0 and --nnodes - 1 = 1 (got 2)"),
    ],
)
def test_bad_flags_are_refused_in_one_line(flags, message):
    with pytest.raises(UserError) as err:
        launch.check(*flags)
    assert err.value.problems == [message]


def test_no_launch_from_inside_a_launched_process(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match="already started by a launcher"):
        launch.relaunch(
            ["train", "c.yaml"], num_processes=2, nnodes=1, node_rank=0, master_addr="x", master_port=1
        )


def test_cli_reports_a_bad_node_rank_before_launching(write_config, tiny_model_dir):
    cfg = write_config(
        {
            "base_model": str(tiny_model_dir),
            "adapter": "lora",
            "datasets": [{"path": "examples/finance_qa.jsonl"}],
        }
    )
    done = subprocess.run(
        [sys.executable, "-m", "finetune.cli", "train", str(cfg), "--nnodes", "2", "--node-rank", "5"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert (
        done.stderr.strip().splitlines()[-1] == "--node-rank: must be between 0 and --nnodes - 1 = 1 (got 5)"
    )


def test_resume_hint_repeats_the_launch_flags_the_processes_never_saw(monkeypatch):
    from finetune.train import checkpoints

    typed = ["train", "cfg.yaml", "--num-processes", "2", "--overwrite"]
    monkeypatch.setattr(sys, "argv", ["finetune.cli", *launch.strip_launch_flags(typed)])
    monkeypatch.delenv(launch.COMMAND_ENV, raising=False)
    assert checkpoints.resume_command() == "finetune train cfg.yaml --resume"
    monkeypatch.setenv(launch.COMMAND_ENV, json.dumps(typed))  # what relaunch leaves for its processes
    assert checkpoints.resume_command() == "finetune train cfg.yaml --num-processes 2 --resume"
