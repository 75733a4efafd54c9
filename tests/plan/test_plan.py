"""finetune plan: shapes from config.json, memory by part (against the H100 peaks in BENCHMARKS.md and autograd's
own count on CPU), the fixes, the CLI (JSON keys, refusal, no torch for a Llama config)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import saved_activations
from conftest import LLAMA, model_folder
from finetune import config
from finetune.plan import devices, estimate, fixes, shapes
from finetune.plan.report import make_plan

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def rows(tmp_path) -> Path:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"text": f"row {i} " * 40}) + "\n" for i in range(100)))
    return path


def cfg_for(base: Path, rows: Path, **over) -> config.Config:
    raw = {
        "base_model": str(base),
        "adapter": "lora",
        "lora_r": 16,
        "lora_alpha": 32,
        "lora_target_linear": True,
        "datasets": [{"path": str(rows), "type": "completion", "field": "text"}],
        "sequence_len": 2048,
        "micro_batch_size": 2,
        "bf16": True,
        **over,
    }
    return config.validate(raw)


# ---------------------------------------------------------------- the six H100 runs of BENCHMARKS.md

# (shape, 4-bit, gradient checkpointing, Liger, measured torch.cuda.max_memory_allocated GiB); all at LoRA r=16
# all-linear, micro-batch 2 x 2048, bf16, QLoRA with paged_adamw_8bit, LoRA with adamw_torch_fused
H100_RUNS = [
    ("8b", True, True, False, 16.4),
    ("8b", True, False, False, 50.5),
    ("8b", False, False, False, 48.0),
    ("8b", True, True, True, 10.9),
    ("1b", True, True, False, 8.5),
    ("1b", False, True, False, 8.6),
]


@pytest.mark.parametrize(("shape", "four_bit", "gc", "liger", "measured"), H100_RUNS)
def test_gpu_peaks_of_benchmarks_within_ten_percent(tmp_path, rows, shape, four_bit, gc, liger, measured):
    base = model_folder(tmp_path, LLAMA[shape])
    over = {"load_in_4bit": four_bit, "gradient_checkpointing": gc,
            "optimizer": "paged_adamw_8bit" if four_bit else "adamw_torch_fused"}  # fmt: skip
    if liger:
        over.update(liger_rope=True, liger_rms_norm=True, liger_glu_activation=True,
                    liger_fused_linear_cross_entropy=True)  # fmt: skip
    plan = estimate(cfg_for(base, rows, **over), devices.gpu_device("h100-80gb"))
    assert plan.allocated_gib == pytest.approx(measured, rel=0.10)
    assert plan.fits
    # what the device must hold is more than the allocator reports: context and slack on top
    assert plan.peak_gib > plan.allocated_gib + devices.CUDA_CONTEXT_GIB


def test_parts_follow_the_settings(tmp_path, rows):
    base = model_folder(tmp_path, LLAMA["8b"])
    lora = estimate(cfg_for(base, rows), devices.gpu_device("h100-80gb"))
    qlora = estimate(cfg_for(base, rows, load_in_4bit=True), devices.gpu_device("h100-80gb"))
    gc = estimate(cfg_for(base, rows, gradient_checkpointing=True), devices.gpu_device("h100-80gb"))
    assert lora.parts["base_weights"] == pytest.approx(14.96, abs=0.01)  # 8.03B bf16
    assert qlora.parts["base_weights"] == pytest.approx(7.27, abs=0.05)  # NF4 + fp32 embeddings and head
    # by hand: LoRA r=16 on every linear layer of Llama-3.1-8B is 41,943,040 parameters (peft's count for it):
    # 16 x (q 4096+4096, k 4096+1024, v 4096+1024, o 4096+4096, gate and up 4096+14336, down 14336+4096) x 32
    assert lora.params["trainable"] == 16 * (8192 + 5120 + 5120 + 8192 + 3 * 18432) * 32 == 41_943_040
    assert lora.parts["optimizer_states"] == pytest.approx(41_943_040 * 8 / 2**30)  # AdamW: two fp32 moments
    # checkpointing keeps each layer's bf16 input only: 2 x 4096 tokens x 4096 x 2 bytes x 32 layers + the fp32
    # final norm's input
    assert gc.parts["activations"] == pytest.approx((4096 * 4096 * 2 * 32 + 4096 * 4096 * 4) / 2**30)
    eight_bit = estimate(cfg_for(base, rows, optimizer="adamw_8bit"), devices.gpu_device("h100-80gb"))
    assert eight_bit.parts["optimizer_states"] == pytest.approx(41_943_040 * 2.04 / 2**30)
    zero3 = cfg_for(base, rows, deepspeed={"zero_optimization": {"stage": 3}})
    sharded = estimate(zero3, devices.gpu_device("h100-80gb"), gpus=4)
    assert sharded.parts["base_weights"] == pytest.approx(14.96 / 4, abs=0.01)
    fsdp = estimate(cfg_for(base, rows, fsdp_version=2), devices.gpu_device("h100-80gb"), gpus=4)
    assert fsdp.parts["base_weights"] == pytest.approx(14.96 / 4, abs=0.01)  # FSDP2 shards as ZeRO-3 does


def test_cpu_step_is_flops_plus_activation_traffic_plus_a_cost_per_layer(tmp_path, rows, monkeypatch):
    """The CPU speed model (fitted on benchmarks/plan_accuracy.py's grid) against its terms worked out by hand for
    a 2-layer model: a narrow model's step is mostly its per-layer cost and element-wise traffic, not FLOPs;
    checkpointing replays the forward's traffic; the fast heap keeps a share of that traffic."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cpu = devices.Device("cpu", 64.0, 1.0, False)  # 1 TFLOP/s over all cores; a narrow model trains on one
    smol = {"model_type": "llama", "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536,
            "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3}  # fmt: skip
    tiny = {**smol, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
            "num_hidden_layers": 2}  # fmt: skip
    big = estimate(cfg_for(model_folder(tmp_path / "smol", smol), rows, bf16=False), cpu)
    assert big.speed["step_seconds"]["per_layer_overhead"] == pytest.approx(30 * 0.0033)
    base = model_folder(tmp_path / "tiny", tiny)
    plain = estimate(cfg_for(base, rows, bf16=False, sequence_len=256, micro_batch_size=4), cpu)
    gc = estimate(cfg_for(base, rows, bf16=False, sequence_len=256, micro_batch_size=4,
                          gradient_checkpointing=True), cpu)  # fmt: skip
    tokens = 4 * 256
    # FLOPs a token, by hand: the layers' linears (q 64x64, k and v 64x32, o 64x64, gate, up and down 64x128,
    # two layers: 73,728) and the head (49,152 x 64) forward 2N and backward 2N; LoRA r16 (16,384 a layer) 6 per
    # parameter; attention 2 x T x 64 a layer forward, twice that backward
    linear, head, lora, attention = 73_728, 49_152 * 64, 2 * 16_384, 2 * 256 * 64 * 2
    flops = 4 * (linear + head) + 6 * lora + 3 * attention
    assert plain.speed["flops_per_token"] == flops == 13_271_040
    # bytes a step writes, by hand: a layer keeps per token the norms' fp32 inputs (2 x 4 x 64), the inputs LoRA
    # shares with q/k/v (4 x 64), gate/up (4 x 64) and down (4 x 128), q, k, v and sdpa's output
    # (4 x (2 x 64 + 2 x 32)) and its logsumexp (4 x 4 heads), gate, SiLU and up (3 x 4 x 128): 3,856 bytes;
    # two layers, the final norm's input (4 x 64) and the loss's three fp32 tokens x 49,152 tensors
    traffic = (3856 * tokens * 2 + 4 * 64 * tokens + 3 * 4 * tokens * 49_152) / 2**30
    one_thread = 1.0 / (os.cpu_count() or 1)  # TFLOP/s of the one thread a narrow model uses
    step = {"flops": tokens * flops / (one_thread * 1e12 * 0.79), "activation_traffic": traffic * 0.66 * 2,
            "per_layer_overhead": 2 * 0.0033}  # fmt: skip
    assert plain.speed["step_seconds"] == pytest.approx(step, rel=1e-3, abs=1e-4)
    assert plain.speed["tokens_per_second"] == pytest.approx(tokens / sum(step.values()), rel=1e-3)
    assert step["flops"] < step["per_layer_overhead"] + step["activation_traffic"]
    # checkpointing writes the forward's activations once more: 4/3 of the traffic (the logits count as the rest)
    assert gc.speed["step_seconds"]["activation_traffic"] == pytest.approx(
        traffic * 4 / 3 * 0.66 * 2, rel=1e-3
    )
    # the fast heap (the default with RAM to spare) keeps 0.55 GiB a GiB of that traffic; the compact heap not
    assert plain.cpu_heap == "fast" and gc.cpu_heap == "fast"
    assert plain.parts["fast_heap_kept"] == pytest.approx(0.55 * traffic, rel=1e-3)
    assert gc.parts["fast_heap_kept"] == pytest.approx(0.55 * traffic * 4 / 3, rel=1e-3)
    tight = estimate(cfg_for(base, rows, bf16=False, sequence_len=256, micro_batch_size=4),
                     devices.Device("cpu", plain.peak_gib - 0.55 * traffic + 0.01, 1.0, False))  # fmt: skip
    assert tight.cpu_heap == "compact" and "fast_heap_kept" not in tight.parts
    assert tight.peak_gib == pytest.approx(plain.peak_gib - 0.55 * traffic, rel=1e-3)


# ---------------------------------------------------------------- shapes


@pytest.mark.parametrize(
    "dims",
    [
        {"model_type": "llama", "tie_word_embeddings": False},
        {"model_type": "qwen2", "tie_word_embeddings": True},
        {"model_type": "mistral"},
        {"model_type": "qwen3", "head_dim": 24},
        {"model_type": "gemma", "head_dim": 16},
    ],
)
def test_formula_counts_what_a_meta_model_has(dims):
    pytest.importorskip("torch")
    from transformers import AutoConfig

    full = {"vocab_size": 1000, "hidden_size": 64, "intermediate_size": 176, "num_hidden_layers": 3,
            "num_attention_heads": 4, "num_key_value_heads": 2, **dims}  # fmt: skip
    formula = shapes.from_dict(full)
    meta = shapes.from_meta_model(AutoConfig.for_model(**full))
    assert formula.total_params == meta.total_params
    assert formula.tied == meta.tied
    assert sorted((x.name, x.in_features, x.out_features) for x in formula.linears) == sorted(
        (x.name, x.in_features, x.out_features) for x in meta.linears
    )


@pytest.mark.real
def test_gguf_shapes_from_metadata(smollm2_gguf):
    dims = shapes.gguf_config(smollm2_gguf)
    shape = shapes.from_dict(dims)
    assert (shape.hidden, shape.layers, shape.vocab, shape.heads, shape.kv_heads) == (576, 30, 49152, 9, 3)
    assert shape.tied
    assert 134e6 < shape.total_params < 135e6  # SmolLM2-135M


# ---------------------------------------------------------------- activations against autograd's own count (CPU)


@pytest.mark.parametrize("targets", [None, ["q_proj", "v_proj"]])
def test_saved_activations_per_layer_match_autograd(tmp_path, rows, targets):
    """One decoder layer's saved tensors (saved_tensors_hooks, parameters left out) per token, fp32 on CPU."""
    pytest.importorskip("torch")
    from finetune.plan import memory, setting

    dims = saved_activations.DIMS
    batch, seq = 2, 64
    measured = saved_activations.per_layer_token(batch, seq, targets=targets or "all-linear")
    base = model_folder(tmp_path, {"model_type": "llama", "num_hidden_layers": 3, **dims})
    over = {"lora_target_linear": targets is None, "lora_target_modules": targets, "bf16": False}
    cfg = cfg_for(base, rows, **over)
    shape = shapes.shape_of(cfg)
    s = setting.setting(cfg, on_gpu=False, micro_batch=batch, gpus=1)
    names = {lin.leaf for lin in setting.adapted(cfg, shape)}
    assert memory.layer_bytes_per_token(shape, s, names) == pytest.approx(measured, rel=0.05)


# ---------------------------------------------------------------- fixes and auto


def test_does_not_fit_gives_the_smallest_fix_first(tmp_path, rows):
    base = model_folder(tmp_path, LLAMA["8b"])
    cfg = cfg_for(base, rows, micro_batch_size=8, sequence_len=4096)
    plan = make_plan(cfg, devices.gpu_device("rtx4090"))
    assert not plan.fits and plan.fixes
    # no single change fits 8B bf16 in 24 GB: checkpointing + Liger's loss + a smaller micro-batch together
    assert len(plan.fixes) == 1
    assert plan.fixes[0].startswith("gradient_checkpointing: true, liger_fused_linear_cross_entropy: true")
    assert "micro_batch_size: 8 -> " in plan.fixes[0] and "load_in_4bit" not in plan.fixes[0]
    changed = cfg.model_copy(update={"gradient_checkpointing": True, "liger_fused_linear_cross_entropy": True,
                                     "micro_batch_size": int(plan.fixes[0].split("8 -> ")[1][0])})  # fmt: skip
    assert estimate(changed, devices.gpu_device("rtx4090")).fits  # the fix does what it says
    # on an H100, checkpointing alone is the smallest change (listed before a smaller micro-batch)
    h100 = make_plan(cfg_for(base, rows, micro_batch_size=4), devices.gpu_device("h100-80gb"))
    assert not h100.fits
    assert h100.fixes[0].startswith("gradient_checkpointing: true")
    assert any(f.startswith("micro_batch_size: 4 -> ") and "gradient_accumulation_steps: 1 -> " in f
               for f in h100.fixes)  # fmt: skip


def test_auto_micro_batch_is_the_largest_that_fits(tmp_path, rows):
    base = model_folder(tmp_path, LLAMA["1b"])
    cfg = cfg_for(base, rows, micro_batch_size="auto", load_in_4bit=True, gradient_checkpointing=True)
    device = devices.gpu_device("h100-80gb", memory_gib=24)
    plan = make_plan(cfg, device)
    assert plan.fits and plan.micro_batch >= 1
    bigger = estimate(cfg, device, micro_batch=plan.micro_batch * 2)
    assert not bigger.fits
    assert any("auto -> " in n for n in plan.notes)
    assert fixes.fixes(cfg, bigger, shapes.shape_of(cfg))  # and the next size up has a way out


# ---------------------------------------------------------------- the command


def run_plan(*args: str) -> subprocess.CompletedProcess:
    code = (
        "import sys\nfrom finetune import cli\nsys.argv = ['finetune', 'plan', *sys.argv[1:]]\n"
        "try:\n    cli.main()\nfinally:\n"
        "    heavy = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        "    print('HEAVY', heavy, file=sys.stderr)\n"
    )
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT)


def write_config(tmp_path: Path, base: Path, rows: Path, **over) -> Path:
    import yaml

    raw = {"base_model": str(base), "adapter": "lora", "lora_target_linear": True, "bf16": True,
           "datasets": [{"path": str(rows), "type": "completion", "field": "text"}], **over}  # fmt: skip
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_plan_json_for_an_8b_config_json_alone_without_torch(tmp_path, rows):
    base = model_folder(tmp_path, LLAMA["8b"])  # config.json only: nothing else to open
    path = write_config(tmp_path, base, rows, load_in_4bit=True, gradient_checkpointing=True,
                        micro_batch_size=2, sequence_len=2048)  # fmt: skip
    proc = run_plan(str(path), "--device", "h100-80gb", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    for key in ("peak_memory_gib", "device_memory_gib", "fits", "tokens_per_second", "parts"):
        assert key in out
    assert out["fits"] is True and out["device_memory_gib"] == 79.6
    assert sum(out["parts"].values()) == pytest.approx(out["peak_memory_gib"], abs=0.01)
    assert out["params"]["total"] == 8030261248  # Llama-3.1-8B's parameter count
    assert "HEAVY []" in proc.stderr  # no torch, no transformers: the fast path for a Llama config


def test_plan_refuses_what_does_not_fit_with_the_fix(tmp_path, rows):
    base = model_folder(tmp_path, LLAMA["8b"])
    path = write_config(tmp_path, base, rows, micro_batch_size=8, sequence_len=4096)
    proc = run_plan(str(path), "--device", "rtx4090")
    assert proc.returncode == 1
    assert "does not fit" in proc.stdout and "smallest fix:" in proc.stdout
    proc = run_plan(str(path), "--device", "cpu", "--memory", "1000", "--set", "sequence_len=128")
    assert proc.returncode == 0 and "fits" in proc.stdout
    assert run_plan(str(path), "--device", "tpu").returncode == 2


def test_prequantized_checkpoint_and_reward_model(tmp_path, rows):
    """A checkpoint saved in 4-bit loads as 4-bit whatever load_in_4bit says; a reward model has no vocabulary
    logits, and pairs put two sequences a row through the model."""
    dims = {**LLAMA["8b"], "quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": True}}
    h100 = devices.gpu_device("h100-80gb")
    saved = estimate(cfg_for(model_folder(tmp_path, dims), rows), h100)
    plain = estimate(cfg_for(model_folder(tmp_path / "b", LLAMA["8b"]), rows, load_in_4bit=True), h100)
    # NF4 + fp32 embeddings and head, as for load_in_4bit (test_parts_follow_the_settings)
    assert saved.parts["base_weights"] == pytest.approx(7.27, abs=0.05)
    assert plain.parts["base_weights"] == pytest.approx(7.27, abs=0.05)
    base = model_folder(tmp_path / "c", LLAMA["1b"])
    sft = estimate(cfg_for(base, rows, gradient_checkpointing=True), h100)
    as_reward = cfg_for(base, rows, gradient_checkpointing=True).model_copy(update={"reward_model": True})
    reward = estimate(as_reward, h100)  # (the estimate reads the keys; pair data is the data stage's concern)
    assert reward.moments["logits_and_loss"] == 0
    # by hand, checkpointing: each of 16 layers' bf16 input (hidden 2048) + the final norm's fp32 input, for
    # 2 x 2048 tokens a micro-batch (SFT) and twice as many for pairs (chosen and rejected)
    assert sft.parts["activations"] == pytest.approx((4096 * 2048 * 2 * 16 + 4096 * 2048 * 4) / 2**30)
    assert reward.parts["activations"] == pytest.approx((8192 * 2048 * 2 * 16 + 8192 * 2048 * 4) / 2**30)


def test_run_length_from_the_prepared_cache(tiny_model_dir, tmp_path):
    """After `finetune preprocess`, steps and tokens come from the cache's own counts, not a guess from bytes."""
    import math

    from finetune import data

    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"text": f"row {i} " + "word " * (20 + i)}) + "\n" for i in range(30)))
    raw = {"base_model": str(tiny_model_dir), "adapter": "lora", "lora_target_linear": True,
           "datasets": [{"path": str(rows), "type": "completion", "field": "text"}], "sequence_len": 64,
           "micro_batch_size": 4, "dataset_prepared_path": str(tmp_path / "prepared"), "dataset_processes": 1}  # fmt: skip
    cfg = config.validate(raw)
    guessed = estimate(cfg, devices.cpu_device()).speed
    assert guessed["counted_from"].startswith("dataset files")
    stats = data.preprocess_command(cfg).stats
    counted = estimate(cfg, devices.cpu_device()).speed
    assert counted["counted_from"] == "prepared data"
    assert counted["optimizer_steps"] == math.ceil(stats["train_rows"] / 4)
    assert counted["tokens"] == pytest.approx(stats["tokens"], rel=0.01)
    other = config.validate({**raw, "sequence_len": 32})  # other token settings: not this cache
    assert estimate(other, devices.cpu_device()).speed["counted_from"].startswith("dataset files")
