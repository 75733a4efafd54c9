"""Wall time of `finetune train` against the hand-written HF script on the same work, alternated to share noise.

    python benchmarks/wall_time.py                        # 2 rounds x (finetune, script), 20 steps each
    python benchmarks/wall_time.py --rounds 3 --max-steps 63
    python benchmarks/wall_time.py --own-order --seeds 42 43 44 --max-steps 63   # as real_learning.py trains

The real_learning.py setup (SmolLM2-135M-Instruct dequantized to an HF folder, FinLoRA fpb rows, LoRA r16 on all
linear layers, fp32, batch 16, seq 512), with finetune in file order (`shuffle_merged_datasets: false`) so both
train the very same batches (same rows, same padding: the same FLOPs; real_learning.py --identity shows the
adapters are then bit-identical). Runs alternate finetune, script, finetune, script ... so a slow minute of the
machine hits both alike. Wall time is the subprocess's, shell to saved adapter (imports, data, model load,
training, outputs); "loop" is the Trainer's own train_runtime. Prints each run and the medians; needs a quiet
machine (any other job on the cores shows up in both columns, unevenly). Each run is under GNU time, for its
minor page faults and system seconds (the kernel's share: on this VM a fault's cost varies with the host).
With --own-order finetune shuffles as its config default does, so the two train different batches of the same
rows (padding printed for each).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_learning as rl  # noqa: E402


def with_time(command: list[str], path: Path) -> list[str]:
    """The command under GNU time, which writes the process's minor page faults and system seconds to `path`
    (the kernel's share of a step: fresh pages for activations; see BENCHMARKS.md, "Wall time")."""
    gnu_time = Path("/usr/bin/time")
    return [str(gnu_time), "-f", "%R %S", "-o", str(path), *command] if gnu_time.exists() else command


def kernel(path: Path) -> dict:
    if not path.exists():
        return {}
    faults, system = path.read_text().split()[-2:]
    return {"minor_faults": int(faults), "sys_s": float(system)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--max-steps", type=int, default=20, help="optimizer steps per run (63 = one epoch)")
    p.add_argument("--seed", type=int, default=44)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/wall_time"))
    p.add_argument("--seeds", type=int, nargs="+", help="one round per seed (instead of --rounds x --seed)")
    p.add_argument(
        "--own-order", action="store_true",
        help="finetune in its own shuffled order (the config default, as real_learning.py runs it) instead of "
        "the script's: different batches, the same rows and epoch",
    )  # fmt: skip
    a = p.parse_args()
    a.workdir.mkdir(parents=True, exist_ok=True)
    model, train, _ = rl.prepare(a.workdir, 1000)
    seeds = a.seeds or [a.seed] * a.rounds
    runs: dict[str, list[dict]] = {"finetune": [], "script": []}
    for r, seed in enumerate(seeds):
        name = f"finetune-{r}"
        cfg = rl.finetune_config(
            a.workdir, name, model, train, seed, shuffle_merged_datasets=a.own_order, max_steps=a.max_steps
        )
        start = time.time()
        with (a.workdir / f"{name}.log").open("w") as log:
            command = [shutil.which("finetune") or "finetune", "train", str(cfg), "--overwrite"]
            subprocess.run(with_time(command, a.workdir / f"{name}.time"),
                           check=True, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        wall = round(time.time() - start, 1)
        res = json.loads((a.workdir / name / "all_results.json").read_text())
        runs["finetune"].append({"seed": seed, "wall_s": wall, "loop_s": round(res["train_runtime"], 1),
                                 "peak_mb": res.get("peak_cpu_memory_mb"), "padding": res.get("padding_fraction"),
                                 **kernel(a.workdir / f"{name}.time")})  # fmt: skip
        print(f"finetune round {r} (seed {seed}): wall {wall} s, loop {res['train_runtime']:.1f} s, "
              f"peak {res.get('peak_cpu_memory_mb')} MB, padding {res.get('padding_fraction')}, "
              f"{kernel(a.workdir / f'{name}.time')}", flush=True)  # fmt: skip

        name = f"script-{r}"
        out = a.workdir / f"{name}.json"
        cmd = [
            sys.executable, str(rl.ROOT / "benchmarks" / "hf_baseline.py"), "--model", str(model), "--data",
            str(train), "--rows", "1000", "--out", str(out), "--lora", "--format", "{context}",
            "--lr", str(rl.HYPER["learning_rate"]), "--lora-r", str(rl.HYPER["lora_r"]),
            "--lora-alpha", str(rl.HYPER["lora_alpha"]), "--batch", str(rl.HYPER["micro_batch_size"]),
            "--seq-len", str(rl.HYPER["seq_len"]), "--seed", str(seed), "--max-steps", str(a.max_steps),
            "--save-adapter", str(a.workdir / name),
        ]  # fmt: skip
        wall, _ = rl.timed(with_time(cmd, a.workdir / f"{name}.time"), a.workdir / f"{name}.log")
        res = json.loads(out.read_text())
        runs["script"].append(
            {"seed": seed, "wall_s": wall, "loop_s": round(res["train_runtime"], 1), "peak_mb": res["peak_rss_mb"],
             "padding": res.get("padding_fraction"), **kernel(a.workdir / f"{name}.time")}
        )  # fmt: skip
        print(
            f"script round {r} (seed {seed}): wall {wall} s, loop {res['train_runtime']:.1f} s, "
            f"peak {res['peak_rss_mb']} MB, padding {res.get('padding_fraction')}, {kernel(a.workdir / f'{name}.time')}",
            flush=True,
        )

    med = {k: {m: statistics.median(x[m] for x in v) for m in ("wall_s", "loop_s")} for k, v in runs.items()}
    order = "each in its own order" if a.own_order else "the same batches"
    print(
        f"\n| contender | runs | median wall s | median loop s |  ({a.max_steps} steps, seeds {seeds}, {order})"
    )
    print("|---|---|---|---|")
    for k, v in med.items():
        print(f"| {k} | {len(runs[k])} | {v['wall_s']:.1f} | {v['loop_s']:.1f} |")
    ratio = med["finetune"]["wall_s"] / med["script"]["wall_s"]
    print(
        f"\nfinetune / script wall: {ratio:.3f}; loop: {med['finetune']['loop_s'] / med['script']['loop_s']:.3f}"
    )
    (a.workdir / "wall_time.json").write_text(json.dumps({"runs": runs, "median": med}, indent=1))


if __name__ == "__main__":
    main()
