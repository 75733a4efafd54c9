"""Full fine-tuning (no `adapter:`) of the real SmolLM2-135M-Instruct against a hand-written full-FT HF Trainer
script (benchmarks/hf_baseline.py --full): same rows in file order, prompt, batch, learning rate, schedule and
seed; the loss curves and the trained weights must be equal. benchmarks/real_full_finetune.py runs the same
comparison over a whole epoch and scores held-out accuracy against the base."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from conftest import ROOT, one_thread_run, sentiment_config

pytestmark = [pytest.mark.real, pytest.mark.slow]


def test_full_fine_tune_equals_the_hand_written_full_ft_script(smollm2_dir, tmp_path):
    """2 steps of 8 rows (the second step's loss is after one update of all 134.5M weights). The script runs in
    a process of its own on ONE thread, finetune on one thread here: with two, a reduction's rounding can
    differ from run to run (test_real_model's note)."""
    import os
    import subprocess

    from safetensors.torch import load_file

    from finetune import config

    raw = sentiment_config(
        tmp_path, str(smollm2_dir), rows=16, shuffle_merged_datasets=False, batch_flattening=False
    )  # padded, as the script
    for key in ("adapter", "lora_r", "lora_alpha", "lora_target_linear"):
        raw.pop(key)  # no adapter: full fine-tuning
    raw.update(learning_rate=1e-5, save_strategy="no")
    cfg = config.validate(raw)
    out = one_thread_run(cfg)
    ours = [e for e in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in e]

    one_thread = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [
        sys.executable, str(ROOT / "benchmarks" / "hf_baseline.py"), "--model", str(smollm2_dir),
        "--data", cfg.datasets[0].path, "--rows", "16", "--out", str(tmp_path / "script.json"), "--full",
        "--format", "{context}", "--lr", "1e-5", "--batch", "8", "--max-steps", "2", "--seq-len", "256",
        "--logging-steps", "1", "--save-model", str(tmp_path / "script"),
    ]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, timeout=600, env=one_thread)
    theirs = json.loads((tmp_path / "script.json").read_text())["log"]

    assert [e["step"] for e in ours] == [e["step"] for e in theirs] == [1, 2]
    for key in ("loss", "grad_norm", "learning_rate"):
        assert [e[key] for e in ours] == [e[key] for e in theirs], key
    assert ours[1]["loss"] < ours[0]["loss"]  # it learned: the update moved the weights towards the labels
    mine, script = load_file(out / "model.safetensors"), load_file(tmp_path / "script" / "model.safetensors")
    assert mine.keys() == script.keys() and not Path(out / "adapter_config.json").exists()
    assert max((mine[k] - script[k]).abs().max().item() for k in mine) == 0.0
