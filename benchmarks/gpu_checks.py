"""The checks gpu_check.py runs: for each, the configs it writes, the commands, and what it reads back.

NOT YET RUN ON A GPU (2026-12-07): only their configs and commands have been checked, by `gpu_check.py
--dry-run` on CPU. Each `verify` reads what `finetune train` leaves (all_results.json, metrics.jsonl, the card)
and returns the row's detail, or raises AssertionError with what was wrong.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from gpu_checks_scripts import (  # noqa: E402 - the checks that run gpu_qlora.py and plan_accuracy.py
    PLAN_ACCURACY_ONLY,
    plan_accuracy,
    plan_bench,
    verify_accuracy,
    verify_bench,
)

FINETUNE = [sys.executable, "-m", "finetune.cli"]
SENTIMENT = {"field_instruction": "context", "field_output": "target", "format": "{instruction}",
             "no_input_format": "{instruction}"}  # fmt: skip


@dataclass
class Context:
    workdir: Path
    gpus: int
    dry_run: bool
    model_8b: Path | None = None  # real Llama-3.1-8B weights in a local folder; None: random weights

    @property
    def tiny(self) -> Path:
        return self.workdir / "tiny"


@dataclass
class Check:
    name: str
    what: str
    timeout: int  # seconds for all its commands together (the global budget may cut it shorter)
    least: int  # seconds it needs to be worth starting
    plan: Callable[
        [Context], tuple[list, list]
    ]  # ([(config path, --set overrides)], [(argv, expected exit)])
    verify: Callable[[Context, list[str]], str]  # the commands' outputs -> the row's detail
    skip: Callable[[Context], str | None] = lambda ctx: None


def prepare(ctx: Context) -> None:
    """The tiny model every functional check trains (CPU, seconds; models/tiny's shape)."""
    from finetune.model.tiny import write_tiny_model

    if not (ctx.tiny / "config.json").exists():
        write_tiny_model(ctx.tiny)


# ---------------------------------------------------------------- helpers


def write(ctx: Context, name: str, file: str = "", **over) -> Path:
    """A config for the tiny model on the bundled sentiment rows, 6 steps, written as workdir/name/<file>.yaml."""
    import yaml

    folder = ctx.workdir / name
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {
        "base_model": str(ctx.tiny), "adapter": "lora", "lora_r": 8, "lora_alpha": 16, "lora_target_linear": True,
        "datasets": [{"path": str(ROOT / "examples" / "sentiment_train.jsonl"), "type": SENTIMENT}],
        "sequence_len": 256, "dataset_prepared_path": str(ctx.workdir / "prepared"),
        "output_dir": str(folder / "out"), "micro_batch_size": 8, "max_steps": 6, "learning_rate": 5e-4,
        "logging_steps": 1, "save_strategy": "no", "seed": 42, "bf16": True, **over,
    }  # fmt: skip
    path = folder / f"{file or name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def train(path: Path, *extra: str, expect: int = 0) -> tuple[list[str], int]:
    return [*FINETUNE, "train", str(path), "--overwrite", *extra], expect


def single(name: str, **over):
    """A check's plan: one config, one `finetune train`."""

    def plan(ctx: Context):
        path = write(ctx, name, **over)
        return [(path, [])], [train(path)]

    return plan


def out(ctx: Context, name: str) -> Path:
    return ctx.workdir / name / "out"


def results(ctx: Context, name: str) -> dict:
    return json.loads((out(ctx, name) / "all_results.json").read_text())


def losses(folder: Path) -> list[float]:
    events = [json.loads(ln) for ln in (folder / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    return [e["loss"] for e in events if "loss" in e]


def trained_on_gpu(ctx: Context, name: str, steps: int = 6) -> str:
    """The common part of every tiny-model check: it ran on CUDA in bf16 and logged finite losses each step."""
    res = results(ctx, name)
    assert str(res.get("device", "")).startswith("cuda"), f"trained on {res.get('device')}, not CUDA"
    assert res.get("mixed_precision") == "bf16", f"mixed_precision {res.get('mixed_precision')}, not bf16"
    seen = losses(out(ctx, name))
    assert len(seen) >= steps and all(math.isfinite(x) for x in seen), f"losses {seen}"
    return f"loss {seen[0]:.3f} -> {seen[-1]:.3f}"


def not_on_cpu_path(output: str, key: str) -> None:
    assert f"{key}: skipped on CPU" not in output, f"{key} took the CPU path"


# ---------------------------------------------------------------- verifications


def verify_qlora(ctx: Context, outputs: list[str]) -> str:
    res = results(ctx, "qlora-bf16")
    card = (out(ctx, "qlora-bf16") / "README.md").read_text()
    assert "quantization: bitsandbytes 4-bit" in card, "the card does not say 4-bit"
    peak, predicted = res["peak_gpu_memory_mb"], res["predicted_peak_gpu_memory_mb"]
    return f"{trained_on_gpu(ctx, 'qlora-bf16')}; peak {peak:.0f} MiB, plan {predicted:.0f} MiB"


def plan_fit(ctx: Context):
    path = write(ctx, "fit-check", adapter="qlora", load_in_4bit=True, micro_batch_size="auto", max_steps=2)
    return [(path, [])], [train(path, "--memory", "0.01", expect=2), train(path)]


def verify_fit(ctx: Context, outputs: list[str]) -> str:
    refused = outputs[0].strip().splitlines()[-1]
    assert "does not fit" in refused and "memory" in refused and "RAM" not in refused, refused
    auto = [ln for ln in outputs[1].splitlines() if "micro_batch_size: auto ->" in ln]
    assert auto, "no micro_batch_size: auto line"
    res = results(ctx, "fit-check")
    assert "predicted_peak_gpu_memory_mb" in res, "no GPU prediction in all_results.json"
    return f"refused at --memory 0.01 ({refused[:80]}...); {auto[0].strip()[:120]}"


LIGER = dict(
    liger_rope=True, liger_rms_norm=True, liger_glu_activation=True, liger_fused_linear_cross_entropy=True
)


def verify_liger(ctx: Context, outputs: list[str]) -> str:
    not_on_cpu_path(
        outputs[0], "liger_rope, liger_rms_norm, liger_glu_activation, liger_fused_linear_cross_entropy"
    )
    return trained_on_gpu(ctx, "liger")


def against(name: str, baseline: str, baseline_over: dict, **over):
    """A check's plan: a baseline config (trained into workdir/name/<baseline>) and the checked one, in turn."""

    def plan(ctx: Context):
        base = write(ctx, name, baseline, output_dir=str(ctx.workdir / name / baseline), **baseline_over)
        checked = write(ctx, name, **over)
        return [(base, []), (checked, [])], [train(base), train(checked)]

    return plan


plan_offload = against("offload", "plain", {"gradient_checkpointing": True}, gradient_checkpointing="offload")


def verify_offload(ctx: Context, outputs: list[str]) -> str:
    assert "runs as plain checkpointing" not in outputs[1], "offload fell back to plain checkpointing"
    detail = trained_on_gpu(ctx, "offload")
    plain, offloaded = losses(ctx.workdir / "offload" / "plain"), losses(out(ctx, "offload"))
    worst = max(abs(a - b) for a, b in zip(plain, offloaded, strict=True))
    assert worst <= 1e-2, f"losses differ from plain checkpointing by {worst:.2e}"
    return f"{detail}; max |loss - plain checkpointing's| {worst:.1e}"


def verify_compile(ctx: Context, outputs: list[str]) -> str:
    not_on_cpu_path(outputs[0], "torch_compile")
    return trained_on_gpu(ctx, "torch-compile")


def flash_missing(ctx: Context) -> str | None:
    if importlib.util.find_spec("flash_attn") is None:
        return "flash_attn is not installed (no wheel on PyPI for this torch/CUDA; `pip install flash-attn` compiles)"
    try:
        import flash_attn  # noqa: F401 - importing is the check (a wheel for another torch fails here)
    except Exception as exc:  # noqa: BLE001 - any import failure is the reason to report
        return f"flash_attn does not import: {type(exc).__name__}: {str(exc)[:150]}"
    return None


def verify_flash(ctx: Context, outputs: list[str]) -> str:
    res = results(ctx, "flash-varlen")
    assert res.get("batching") == "packed", f"batching {res.get('batching')}, not packed"
    return f"{trained_on_gpu(ctx, 'flash-varlen')}; padding {res.get('padding_fraction')}"


def verify_flatten(ctx: Context, outputs: list[str]) -> str:
    res = results(ctx, "flash-flatten")
    assert res.get("batching") == "flattened", f"batching {res.get('batching')}, not flattened"
    return f"{trained_on_gpu(ctx, 'flash-flatten')}; padding {res.get('padding_fraction')}"


# the default (flattened, sdpa run per row: no flash_attn needed) against batch_flattening: false
plan_sdpa_flatten = against("sdpa-flatten", "padded", {"batch_flattening": False})


def verify_sdpa_flatten(ctx: Context, outputs: list[str]) -> str:
    assert "sdpa run per sequence" in " ".join(outputs[1].split()), (
        "the default did not flatten with sdpa per row"
    )
    res = results(ctx, "sdpa-flatten")
    assert res.get("batching") == "flattened", f"batching {res.get('batching')}, not flattened"
    detail = trained_on_gpu(ctx, "sdpa-flatten")
    padded, flattened = losses(ctx.workdir / "sdpa-flatten" / "padded"), losses(out(ctx, "sdpa-flatten"))
    worst = max(abs(a - b) for a, b in zip(padded, flattened, strict=True))
    assert worst <= 2e-2, f"losses differ from padded batches by {worst:.2e} (bf16)"
    return f"{detail}; padding {res.get('padding_fraction')}; max |loss - padded's| {worst:.1e}"


def no_gpu(ctx: Context) -> str | None:
    return None if ctx.gpus else "no CUDA GPU (nvidia-smi lists none)"


def plan_fsdp(ctx: Context):
    """Two ranks on two GPUs (`--num-processes 2`); on one GPU a single FSDP2 rank through fsdp_one_rank.py
    (finetune trains one process without FSDP, and NCCL refuses two ranks on one GPU)."""
    fsdp = {"fsdp_version": 2, "fsdp_config": {"state_dict_type": "FULL_STATE_DICT"}}
    path = write(ctx, "fsdp", max_steps=4, save_strategy="steps", save_steps=2, **fsdp)
    if ctx.gpus >= 2:
        launch, extra = FINETUNE, ["--num-processes", "2"]
    else:
        torchrun = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "1",
            "--master-port",
            "29611",
        ]
        launch, extra = [*torchrun, str(ROOT / "benchmarks" / "fsdp_one_rank.py")], []
    return [(path, []), (path, ["max_steps=6"])], [
        ([*launch, "train", str(path), "--overwrite", *extra], 0),
        ([*launch, "train", str(path), "--resume", "--set", "max_steps=6", *extra], 0),
    ]


def verify_fsdp(ctx: Context, outputs: list[str]) -> str:
    res = results(ctx, "fsdp")
    ranks = min(ctx.gpus, 2)
    assert res.get("distributed_type") == "fsdp", f"distributed_type {res.get('distributed_type')}, not fsdp"
    assert res.get("world_size") == ranks, f"world_size {res.get('world_size')}, not {ranks}"
    state = json.loads((out(ctx, "fsdp") / "trainer_state.json").read_text())
    steps = [e["step"] for e in state["log_history"] if "loss" in e]
    assert steps == [1, 2, 3, 4, 5, 6], f"logged steps {steps}"
    checkpoints = sorted(out(ctx, "fsdp").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert checkpoints, "no checkpoint folder"
    files = sorted(p.name for p in checkpoints[-1].iterdir())
    assert not any(name.startswith("pytorch_model_fsdp_") for name in files), f"sharded checkpoint: {files}"
    return f"steps 1-6 logged, resumed at step 4; {checkpoints[-1].name}: {', '.join(files[:8])}"


def plan_grpo(ctx: Context):
    path = ROOT / "examples" / "grpo.yaml"
    over = [f"base_model={ctx.tiny}", f"output_dir={out(ctx, 'grpo')}", "max_steps=3", "bf16=true"]
    (ctx.workdir / "grpo").mkdir(parents=True, exist_ok=True)
    return [(path, over)], [
        ([*FINETUNE, "train", str(path), "--overwrite", *(a for o in over for a in ("--set", o))], 0)
    ]


def verify_grpo(ctx: Context, outputs: list[str]) -> str:
    events = [
        json.loads(ln) for ln in (out(ctx, "grpo") / "metrics.jsonl").read_text().splitlines() if ln.strip()
    ]
    rewards = [e["reward"] for e in events if "reward" in e]
    assert len(rewards) >= 3, f"{len(rewards)} reward logs"
    res = results(ctx, "grpo")
    assert str(res.get("device", "")).startswith("cuda"), res.get("device")
    return f"mean reward by step: {', '.join(f'{r:.2f}' for r in rewards)}"


def no_liger(ctx: Context) -> str | None:
    return None if importlib.util.find_spec("liger_kernel") else "liger-kernel is not installed"


QLORA = dict(adapter="qlora", load_in_4bit=True, optimizer="paged_adamw_8bit")
CHECKS = [
    Check("qlora-bf16", "bitsandbytes CUDA 4-bit QLoRA, bf16 autocast, paged 8-bit AdamW", 90, 20,
          single("qlora-bf16", **QLORA), verify_qlora),
    Check("fit-check", "the fit check's CUDA branch: refusal at --memory 0.01, micro_batch_size: auto", 90, 25,
          plan_fit, verify_fit),
    Check("liger", "Liger kernels (RoPE, RMSNorm, SwiGLU, fused linear cross-entropy) on QLoRA", 90, 20,
          single("liger", **QLORA, **LIGER), verify_liger, no_liger),
    Check("offload", "gradient_checkpointing: offload (activations to pinned host memory) vs plain", 120, 40,
          plan_offload, verify_offload),
    Check("flash-varlen", "sample_packing + flash_attention: packed rows, flash-attention varlen", 90, 20,
          single("flash-varlen", sample_packing=True, flash_attention=True), verify_flash, flash_missing),
    Check("flash-flatten", "batch_flattening + flash_attention: micro_batch_size rows flattened, varlen", 90, 20,
          single("flash-flatten", batch_flattening=True, flash_attention=True), verify_flatten, flash_missing),
    Check("sdpa-flatten", "the default batching on CUDA sdpa: rows flattened, sdpa per row, vs padded", 90, 30,
          plan_sdpa_flatten, verify_sdpa_flatten),
    Check("grpo", "rl: grpo (examples/grpo.yaml on the tiny model), 3 steps", 120, 30, plan_grpo, verify_grpo),
    Check("fsdp", "FSDP2, FULL_STATE_DICT checkpoints, --resume (one rank per GPU, at most 2)", 180, 60,
          plan_fsdp, verify_fsdp, no_gpu),
    Check("8b-qlora", "Llama-3.1-8B shape, QLoRA, checkpointing (gpu_qlora.py; writes the model)", 170, 120,
          plan_bench("qlora"), verify_bench("qlora")),
    Check("8b-lora", "Llama-3.1-8B shape, bf16 LoRA, no checkpointing (gpu_qlora.py)", 110, 70,
          plan_bench("lora", "--gradient-checkpointing", "false"), verify_bench("lora")),
    Check("torch-compile", "torch_compile: true", 120, 40, single("torch-compile", torch_compile=True),
          verify_compile),
    Check("plan-accuracy", f"plan_accuracy.py's GPU mode (--only {PLAN_ACCURACY_ONLY})", 90, 30,
          plan_accuracy, verify_accuracy),
]  # fmt: skip
