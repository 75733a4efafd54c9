"""Launching several training processes from a test (DDP, DeepSpeed ZeRO, FSDP2 on CPU with gloo): the helpers the
train, outputs and plan tests share. Every launch is bounded by a timeout that kills its whole process group
(FACTS.md: rarely a process aborts at exit and its peer waits)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
QA = ROOT / "examples" / "finance_qa.jsonl"
ZERO = {stage: str(ROOT / "deepspeed_configs" / f"zero{stage}.json") for stage in (1, 2, 3)}
# Observed: <= 5e-7 (the logged loss is averaged over processes in float32). FACTS.md: <= 1e-6.
LOSS_TOL = 2e-6
# Adapter weights after 4 Adam steps at lr 0.01: Adam rescales tiny gradient differences, observed <= 3e-5.
WEIGHT_TOL = 2e-4
TIMEOUT = 300


def run_cfg(base: Path, tmp: Path, **over) -> dict:
    return {
        "base_model": str(base), "adapter": "lora", "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0,
        "lora_target_linear": True,
        "datasets": [{"path": str(QA), "type": {
            "field_instruction": "context", "field_output": "target",
            "format": "[INST] {instruction} [/INST]", "no_input_format": "[INST] {instruction} [/INST]"}}],
        "sequence_len": 128, "dataset_prepared_path": str(tmp / "prepared"), "dataset_processes": 1,
        "output_dir": str(tmp / "out"), "micro_batch_size": 2, "max_steps": 4, "learning_rate": 0.01,
        "lr_scheduler": "constant", "logging_steps": 1, "save_strategy": "no", "seed": 7, **over,
    }  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(commands: list[list[str]], tmp: Path) -> list[str]:
    """Start the commands together (each in its own process group), wait for all, return their outputs.

    Fails the test if any exits non-zero or the whole run outlives TIMEOUT (then every process is killed).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "LOCAL_", "WORLD_", "MASTER_"))}
    env.update(
        HF_HUB_OFFLINE="1", WANDB_MODE="disabled", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
        TORCH_EXTENSIONS_DIR=str(tmp / "torch_extensions"),  # to see that no DeepSpeed op gets compiled
    )  # fmt: skip
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "finetune.cli", *c],
            cwd=tmp,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        for c in commands
    ]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=TIMEOUT)[0])
    except subprocess.TimeoutExpired:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
        pytest.fail(f"a distributed run outlived {TIMEOUT} s: {' | '.join(' '.join(c) for c in commands)}")
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-4000:]
    return outputs


def losses(out: Path) -> list[float]:
    state = json.loads((out / "trainer_state.json").read_text())
    return [e["loss"] for e in state["log_history"] if "loss" in e]


def adapter(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(out / "adapter_model.safetensors"))


def card_hyperparameters(out: Path) -> dict:
    text = (out / "README.md").read_text().split("### Training hyperparameters")[1].split("###")[0]
    return dict(line[2:].split(": ", 1) for line in text.splitlines() if line.startswith("- "))


FSDP = {"fsdp_version": 2, "fsdp_config": {"transformer_layer_cls_to_wrap": "LlamaDecoderLayer"}}
