"""Training throughput on CPU: finetune (sample_packing on, then off) vs a hand-written HF Trainer + peft
script (dynamic padding, then group_by_length) vs axolotl when installed, on the same rows and model.

    python benchmarks/train_throughput.py                       # QLoRA, 150 formula + 20 FinanceBench rows
    python benchmarks/train_throughput.py --adapter lora --axolotl /tmp/axolotl-venv/bin/axolotl

A ~20M-parameter Llama (finetune.model.tiny.build_model, hidden 512, 6 layers; the tiny byte-level tokenizer) is
written once to --workdir; the rows are the first N of ../shared formula_train.jsonl (138-501 tokens) and
the first M of financebench_train.jsonl (700-6,000 tokens; those over sequence_len 2048 are dropped by
every contender): variable lengths, as real SFT data. Every run is its own process, one epoch, LoRA r=16 on
all linear layers, batch 4 (or the token budget of 4 x 2048 with packing), lr 2e-4. Prints real (non-pad) tokens/s, the ratio to each peer, the padding
fraction and peak RSS; then the end-to-end wall time of a short run (20 steps on the tiny test model,
shell prompt to adapter on disk; with axolotl, the median of --e2e-repeat alternating runs of each). One
run of the whole benchmark stays within ~10 minutes on 2 cores (~15 with axolotl).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FINLORA = ROOT.parent / "shared" / "data" / "finlora"
SIZES = dict(hidden_size=512, layers=6, heads=8, kv_heads=4, intermediate_size=1536)
FORMAT = {
    "field_instruction": "context",
    "field_output": "target",
    "format": "[INST] {instruction} [/INST]",
    "no_input_format": "[INST] {instruction} [/INST]",
}


def write_model(folder: Path) -> int:
    from finetune.model.tiny import build_model, build_tokenizer

    tokenizer = build_tokenizer()
    model = build_model(tokenizer, seed=0, **SIZES)
    if not (folder / "config.json").exists():
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def write_rows(path: Path, counts: tuple[int, int]) -> int:
    lines = []
    for name, n in zip(("formula_train.jsonl", "financebench_train.jsonl"), counts, strict=True):
        lines += (FINLORA / name).read_text().splitlines()[:n]
    path.write_text("\n".join(lines) + "\n")
    return len(lines)


def finetune_config(path: Path, model: Path, rows: Path, work: Path, name: str, **over) -> Path:
    import yaml

    cfg = {
        "base_model": str(model),
        "load_in_4bit": over.pop("adapter") == "qlora",
        "adapter": "lora",
        "lora_r": 16,
        "lora_alpha": 32,
        "lora_target_linear": True,
        "datasets": [{"path": str(rows), "type": FORMAT}],
        "dataset_prepared_path": str(work / "prepared"),
        "sequence_len": 2048,
        "micro_batch_size": 4,
        "num_epochs": 1,
        "learning_rate": 2e-4,
        "lr_scheduler": "cosine",
        "logging_steps": 10,
        "saves_per_epoch": 0,
        "seed": 42,
        "output_dir": str(work / name),
        **over,
    }
    if cfg["load_in_4bit"]:
        cfg["adapter"] = "qlora"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def run_finetune(cfg: Path, name: str) -> dict:
    start = time.time()
    subprocess.run(
        [str(Path(sys.executable).parent / "finetune"), "train", str(cfg), "--overwrite"],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    import yaml

    out = Path(yaml.safe_load(cfg.read_text())["output_dir"])
    res = json.loads((out / "all_results.json").read_text())
    return {
        "name": name,
        "rows": res["data"]["train_rows"],
        "steps": res["global_step"],
        "real_tokens": res["train_tokens"],
        "train_runtime": res["train_runtime"],
        "wall_s": round(time.time() - start, 1),
        "real_tokens_per_second": res["train_tokens_per_second"],
        "padding_fraction": res.get("padding_fraction"),
        "peak_rss_mb": res["peak_cpu_memory_mb"],
        "final_loss": res.get("train_loss"),
    }


def run_hf(model: Path, rows: Path, n: int, work: Path, lora: bool, grouped: bool, gpu: bool = False) -> dict:
    out = work / f"hf-{'grouped' if grouped else 'dynamic'}.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "hf_baseline.py"), "--model", str(model)]
    cmd += ["--data", str(rows), "--rows", str(n), "--out", str(out)]
    cmd += ["--lora"] * lora + ["--group-by-length"] * grouped + ["--gpu"] * gpu
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return json.loads(out.read_text())


def axolotl_config(path: Path, model: Path, rows: Path, work: Path, name: str = "axolotl", **over) -> Path:
    """finetune_config's run in axolotl's keys: same model, rows, format, LoRA, batch, lr, schedule, seed.

    Where they differ, and why: plain LoRA only (axolotl's QLoRA fails on CPU; its LoRA Triton kernels are
    CUDA-only, so `lora_*_kernel: false`: FACTS.md); `sample_packing: false` (on CPU axolotl's packing drops
    rows and lets packed rows attend to each other without flash attention: FACTS.md); `val_set_size: 0` and
    `save_strategy: no` as finetune's default of no eval split and `saves_per_epoch: 0`; fp32 as finetune
    uses on CPU. Everything else is each tool's default (e.g. axolotl tokenizes with 2 processes here).
    """
    import yaml

    cfg = {
        "base_model": str(model),
        "adapter": "lora",
        "lora_r": 16,
        "lora_alpha": 32,
        "lora_target_linear": True,
        "lora_mlp_kernel": False,
        "lora_qkv_kernel": False,
        "lora_o_kernel": False,
        "datasets": [{"path": str(rows), "ds_type": "json", "type": FORMAT}],
        "dataset_prepared_path": str(work / f"{name}-prepared"),
        "val_set_size": 0,
        "sequence_len": 2048,
        "sample_packing": False,
        "micro_batch_size": 4,
        "gradient_accumulation_steps": 1,
        "num_epochs": 1,
        "optimizer": "adamw_torch",
        "learning_rate": 2e-4,
        "lr_scheduler": "cosine",
        "logging_steps": 10,
        "save_strategy": "no",
        "seed": 42,
        "bf16": False,
        "fp16": False,
        "output_dir": str(work / f"{name}-out"),
        **over,
    }
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def timed(cmd: list[str], log: Path, env: dict | None = None) -> tuple[float, float]:
    """Run `cmd` (output to `log`); (wall seconds, peak RSS MiB of it and the children it waited for)."""
    start = time.time()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.time() - start
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"{cmd[0]} failed ({log}):\n{log.read_text()[-3000:]}")
    return wall, usage.ru_maxrss / 1024


def axolotl_env() -> dict:
    """Offline, and no telemetry: DO_NOT_TRACK, or it retries sending and hangs (FACTS.md)."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1"}


def run_axolotl(axolotl: str, cfg: Path, real_tokens: int) -> dict:
    """Real tokens/s = the rows' real tokens (counted by finetune's data stage; no packing) / train_runtime.

    `--launcher python`: the default accelerate launcher is not on PATH in a bare venv (FACTS.md).
    """
    log = cfg.with_suffix(".log")
    wall, rss = timed([axolotl, "train", str(cfg), "--launcher", "python"], log, axolotl_env())
    runtime = steps = None
    for line in log.read_text().splitlines():
        if "'train_runtime'" in line:  # axolotl 0.19 logs values as strings: {'train_runtime': '3.957', ...}
            runtime = float(line.split("'train_runtime':")[1].split(",")[0].strip(" '"))
        if "Maximum number of steps set at" in line:  # ceil(rows / 4): shows it kept the same rows
            steps = int(line.rsplit(" ", 1)[1])
    return {
        "name": "axolotl (LoRA, no packing)",
        "rows": "n/a",
        "steps": steps,
        "real_tokens": real_tokens,
        "train_runtime": runtime,
        "wall_s": round(wall, 1),
        "real_tokens_per_second": round(real_tokens / runtime, 1) if runtime else None,
        "peak_rss_mb": rss,
    }


def end_to_end(work: Path, adapter: str, axolotl: str | None, repeat: int) -> list[tuple[str, list[float]]]:
    """Shell prompt to adapter on disk: 20 steps on the tiny test model, 80 formula rows, cold data cache.

    Both tools get the same config (finetune_config / axolotl_config, sequence_len 512, max_steps 20) and
    write their own data cache afresh each run. One untimed run of each first (bytecode and page cache, as
    on a machine where the tool has run before); then `repeat` rounds, the order alternating each round, as
    the load of a shared machine drifts. Returns each tool's wall times (and prints them as they come).
    """
    from finetune.model.tiny import write_tiny_model

    tiny = work / "tiny"
    if not (tiny / "config.json").exists():
        write_tiny_model(tiny)
    rows = work / "e2e.jsonl"
    write_rows(rows, (80, 0))
    same = dict(max_steps=20, sequence_len=512)
    cfg = finetune_config(work / "e2e.yaml", tiny, rows, work, "e2e-out", adapter=adapter,
                          dataset_prepared_path=str(work / "e2e-prepared"), **same)  # fmt: skip

    def finetune_run() -> float:
        shutil.rmtree(work / "e2e-prepared", ignore_errors=True)
        exe = str(Path(sys.executable).parent / "finetune")
        wall, _ = timed([exe, "train", str(cfg), "--overwrite"], work / "e2e.log")
        assert (work / "e2e-out" / "adapter_model.safetensors").exists()
        return wall

    tools = [(f"finetune train ({adapter}, 20 steps)", finetune_run)]
    if axolotl:
        acfg = axolotl_config(work / "e2e-axolotl.yaml", tiny, rows, work, "e2e-axolotl", **same)

        def axolotl_run() -> float:
            for folder in ("e2e-axolotl-prepared", "e2e-axolotl-out"):
                shutil.rmtree(work / folder, ignore_errors=True)
            cmd = [axolotl, "train", str(acfg), "--launcher", "python"]
            wall, _ = timed(cmd, work / "e2e-axolotl.log", axolotl_env())
            assert (work / "e2e-axolotl-out" / "adapter_model.safetensors").exists()
            return wall

        tools.append(("axolotl train (lora, 20 steps)", axolotl_run))
    for _, run in tools:
        run()  # warm-up, untimed
    times: dict[str, list[float]] = {name: [] for name, _ in tools}
    for i in range(repeat):
        for name, run in tools if i % 2 == 0 else tools[::-1]:
            times[name].append(run())
            print(f"  {name}: {times[name][-1]:.1f} s (load {os.getloadavg()[0]:.1f})", flush=True)
    return list(times.items())


def prepared_tokens(cfg: Path) -> int:
    """Tokenize once before the timed runs (they then read the cache); the rows' real token count.

    The cache folder is emptied first: a cache left by another finetune version has another hash folder.
    """
    import yaml

    prepared = Path(yaml.safe_load(cfg.read_text())["dataset_prepared_path"])
    shutil.rmtree(prepared, ignore_errors=True)
    subprocess.run(
        [str(Path(sys.executable).parent / "finetune"), "preprocess", str(cfg)],
        check=True,
        capture_output=True,
    )
    (stats,) = prepared.glob("*/finetune_stats.json")
    return json.loads(stats.read_text())["stats"]["tokens"]


def run_best(runs: list, repeat: int) -> list[dict]:
    """Each contender `repeat` times, interleaved (a shared machine's load drifts); the fastest run of each."""
    best: list[dict | None] = [None] * len(runs)
    for _ in range(repeat):
        for i, run in enumerate(runs):
            r = run()
            print(f"  {r}", flush=True)
            if best[i] is None or r["real_tokens_per_second"] > best[i]["real_tokens_per_second"]:
                best[i] = r
    return best


def print_table(results: list[dict], n: int) -> None:
    hf_dynamic, hf_grouped = results[2], results[3]
    print(
        "\n| run | rows | steps | real tokens | real tokens/s | vs HF dynamic | vs HF grouped | padding | peak RSS |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        tps = r["real_tokens_per_second"]
        vs = [f"{tps / peer['real_tokens_per_second']:.2f}x" for peer in (hf_dynamic, hf_grouped)]
        pad = f"{r['padding_fraction']:.1%}" if r.get("padding_fraction") is not None else "n/a"
        rss = f"{r['peak_rss_mb']:,.0f} MiB" if r.get("peak_rss_mb") else "n/a"
        print(f"| {r['name']} | {r.get('rows', n)} | {r.get('steps', 'n/a')} | {r['real_tokens']:,} | "
              f"{tps:,.0f} | {vs[0]} | {vs[1]} | {pad} | {rss} |")  # fmt: skip


def throughput(a, work: Path, model: Path, rows: Path, n: int) -> None:
    """Every contender on the benchmark rows, `--repeat` times in turn; the fastest run of each counts."""
    runs = []  # one function per contender, each run in turn `--repeat` times; the fastest run counts
    for packing in (True, False):
        cfg = finetune_config(work / f"ft-{packing}.yaml", model, rows, work, f"ft-{packing}",
                              adapter=a.adapter, sample_packing=packing, flash_attention=a.gpu)  # fmt: skip
        name = f"finetune, sample_packing: {str(packing).lower()}"
        runs.append(functools.partial(run_finetune, cfg, name))
    for grouped in (False, True):
        runs.append(functools.partial(run_hf, model, rows, n, work, a.adapter == "lora", grouped, a.gpu))
    if a.axolotl and a.adapter == "lora":
        acfg = axolotl_config(work / "axolotl.yaml", model, rows, work)
        runs.append(functools.partial(run_axolotl, a.axolotl, acfg, prepared_tokens(runs[0].args[0])))
    elif a.axolotl:
        print(
            "  axolotl: skipped for QLoRA (its QLoRA fails on CPU: FACTS.md); use --adapter lora", flush=True
        )
    else:
        print("  axolotl: not installed (pass --axolotl PATH); skipped", flush=True)
    results = run_best(runs, a.repeat)
    print_table(results, n)
    if len(results) == 5:  # axolotl ran
        ax = results[4]["real_tokens_per_second"]
        for r in results[:2]:
            print(f"  {r['name']} / axolotl: {r['real_tokens_per_second'] / ax:.2f}x the real tokens/s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", nargs=2, type=int, default=[150, 20], metavar=("FORMULA", "FINANCEBENCH"))
    p.add_argument("--adapter", choices=["qlora", "lora"], default="qlora")
    p.add_argument("--workdir", default="/tmp/finetune-throughput")
    p.add_argument("--axolotl", default=shutil.which("axolotl"), help="axolotl executable (default: on PATH)")
    p.add_argument("--skip-e2e", action="store_true")
    p.add_argument("--only-e2e", action="store_true", help="only the end-to-end runs (no throughput table)")
    p.add_argument("--e2e-repeat", type=int, default=3, help="end-to-end runs per tool, alternating; median")
    p.add_argument(
        "--gpu", action="store_true", help="CUDA: flash attention for every contender (finetune then packs)"
    )
    p.add_argument(
        "--repeat", type=int, default=1, help="runs per contender, interleaved; the fastest counts"
    )
    p.add_argument(
        "--nice",
        type=int,
        default=0,
        help="niceness increment, e.g. -10 (root) on a machine shared with other jobs",
    )
    a = p.parse_args()
    if a.nice:
        os.nice(a.nice)  # inherited by every run below
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    model = work / "model-20m"
    params = write_model(model)
    rows = work / "rows.jsonl"
    n = write_rows(rows, tuple(a.rows))
    print(f"model: Llama {params / 1e6:.1f}M parameters {SIZES}; {n} rows ({a.rows[0]} formula + {a.rows[1]} "
          f"FinanceBench); {a.adapter}; {os.cpu_count()} CPUs; load {load_before[0]:.1f}", flush=True)  # fmt: skip

    if not a.only_e2e:
        throughput(a, work, model, rows, n)
    if not a.skip_e2e:
        print("\nend to end (shell prompt to adapter on disk):", flush=True)
        axolotl = a.axolotl if a.adapter == "lora" else None
        medians = {}
        for name, seconds in end_to_end(work, a.adapter, axolotl, a.e2e_repeat):
            medians[name] = statistics.median(seconds)
            print(f"  {name}: median {medians[name]:.1f} s of {', '.join(f'{s:.1f}' for s in seconds)}")
        if len(medians) == 2:
            ft, ax = medians.values()
            print(f"  finetune / axolotl: {ft / ax:.2f}x the wall time")
    load_after = os.getloadavg()
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}; load average {load_before[0]:.1f} before, {load_after[0]:.1f} after; "
          f"{time.strftime('%Y-%m-%d %H:%M')}")  # fmt: skip


if __name__ == "__main__":
    main()
