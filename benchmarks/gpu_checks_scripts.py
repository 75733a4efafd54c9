"""The checks of gpu_checks.py that run the other benchmark scripts: gpu_qlora.py for the 8B tokens/s rows of
BENCHMARKS.md, plan_accuracy.py for its GPU mode. NOT YET RUN ON A GPU (2026-12-07): only the configs they train
have been validated, by `gpu_check.py --dry-run` on CPU."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gpu_checks import Context

ROOT = Path(__file__).resolve().parent.parent
# BENCHMARKS.md, "GPU: QLoRA and LoRA on Llama 3.x shapes (H100)", 2026-11-23: what the 8B rows compare with
BENCHMARKS_8B = {"qlora": "4,676 tokens/s, 16.4 GiB", "lora": "8,627 tokens/s, 48.0 GiB"}
PLAN_ACCURACY_ONLY = "tiny-b8"  # one grid config (4-bit, checkpointing): the budget holds one
BENCH_STEPS = ["--steps", "10", "--skip", "3"]


def plan_accuracy(ctx: Context):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import plan_accuracy as pa
    import yaml

    work = ctx.workdir / "plan-accuracy" / "work"
    work.mkdir(parents=True, exist_ok=True)
    pa.write_rows(work / "rows.jsonl")
    configs = []
    for name in (n for n in pa.GRID if PLAN_ACCURACY_ONLY in n):
        path = work / f"{name}.yaml"  # the file plan_accuracy.measure writes, written here to validate it
        path.write_text(yaml.safe_dump(pa.config_for(name, work)))
        configs.append((path, []))
    argv = [sys.executable, str(ROOT / "benchmarks" / "plan_accuracy.py"), "--only", PLAN_ACCURACY_ONLY,
            "--workdir", str(work), "--again"]  # fmt: skip
    return configs, [(argv, 0)]


def verify_accuracy(ctx: Context, outputs: list[str]) -> str:
    measured = json.loads((ctx.workdir / "plan-accuracy" / "work" / "measured-gpu.json").read_text())
    rows = [ln for ln in outputs[0].splitlines() if ln.startswith(f"| {PLAN_ACCURACY_ONLY}")]
    assert rows and all("error" not in v.get("gpu", {}) for v in measured.values()), json.dumps(measured)[
        :200
    ]
    return rows[0].replace("|", " ").strip()


def plan_bench(mode: str, *extra: str):
    def plan(ctx: Context):
        sys.path.insert(0, str(ROOT / "benchmarks"))
        import gpu_qlora
        import yaml

        work = ctx.workdir / "bench"
        argv = ["--shape", "8b", "--mode", mode, *BENCH_STEPS, *extra, "--workdir", str(work)]
        if ctx.model_8b is not None:
            argv += ["--base-model", str(ctx.model_8b)]
        args = gpu_qlora.parser().parse_args(argv)
        work.mkdir(parents=True, exist_ok=True)
        if ctx.dry_run and ctx.model_8b is None:  # validated against a config.json-only random model
            gpu_qlora.write_model("8b", work / "llama-8b-random", weights=False)
            gpu_qlora.write_rows(work / "rows.jsonl", 8)
        path = work / f"check-{gpu_qlora.run_name(args)}.yaml"
        path.write_text(yaml.safe_dump(gpu_qlora.build_config(args)))
        configs = [(path, [])] if ctx.dry_run else []
        return configs, [([sys.executable, str(ROOT / "benchmarks" / "gpu_qlora.py"), *argv], 0)]

    return plan


def verify_bench(mode: str):
    def verify(ctx: Context, outputs: list[str]) -> str:
        line = next(ln for ln in reversed(outputs[0].splitlines()) if ln.startswith("{"))
        r = json.loads(line)
        return (f"{r['tokens_per_s_steady']:,.0f} tokens/s, peak {r['peak_gpu_mem_gib']} GiB (plan "
                f"{r['predicted_peak_gpu_mem_gib']} GiB, {r['predicted_tokens_per_s']:,.0f} tokens/s), MFU {r['mfu']}; "
                f"BENCHMARKS.md (H100): {BENCHMARKS_8B[mode]}")  # fmt: skip

    return verify
