"""Does GRPO raise the reward of a real model? SmolLM2-135M-Instruct, the `label` reward, FinLoRA sentiment.

    python benchmarks/grpo_real.py                       # 30 steps, ~25 min on 2 shared CPU cores
    python benchmarks/grpo_real.py --steps 10 --workdir /tmp/grpo_quick

The real SmolLM2-135M-Instruct (the GGUF file in models/, which finetune reads as base_model) is trained
with `rl: grpo` on the prompts of FinLoRA sentiment (../shared/data/finlora/fpb_test.jsonl: the first 1,000
rows are the prompt pool, the last 212 held out, as benchmarks/real_learning.py splits them), written as
chat_template conversations (user: the question, assistant: the label). Each step samples `num_generations`
(8) completions of up to `max_completion_length` (8) tokens for one prompt and scores them with the built-in
`label` reward (1 when the first sentiment label the completion names is the row's). Prints the mean reward
of the first and last steps (from metrics.jsonl) and `finetune eval` accuracy on the first 100 held-out rows
before (the base alone) and after (base + the GRPO adapter), with wall time and peak RAM.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FPB = ROOT.parent / "shared" / "data" / "finlora" / "fpb_test.jsonl"
GGUF = ROOT.parent / "main" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
FINETUNE = [sys.executable, "-m", "finetune.cli"]
LIMIT = 100  # held-out rows scored before and after (generation on 2 shared cores is the slow part)


def chat(row: dict) -> dict:
    """A FinLoRA row as a conversation: the instruct model answers in its chat format (it names a label in a
    sentence more often than it continues the bare `Answer: ` text)."""
    question = row["context"].removesuffix("Answer: ").rstrip()
    return {
        "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": row["target"]}]
    }


def write_inputs(work: Path, steps: int, generations: int, length: int, lr: float, seed: int) -> Path:
    import yaml

    rows = [json.loads(line) for line in FPB.read_text().splitlines() if line.strip()]
    for name, part in (("train", rows[:1000]), ("heldout", rows[1000:])):
        (work / f"{name}.jsonl").write_text("".join(json.dumps(chat(r)) + "\n" for r in part))
    gguf = GGUF if GGUF.is_file() else ROOT / "models" / GGUF.name
    cfg = {
        "base_model": str(gguf), "adapter": "lora", "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.0,
        "lora_target_linear": True,
        "datasets": [{"path": str(work / "train.jsonl"), "type": "chat_template"}],
        "sequence_len": 256, "rl": "grpo",
        "trl": {"num_generations": generations, "max_completion_length": length, "beta": 0.04,
                "temperature": 1.0, "reward_funcs": ["label"]},
        "micro_batch_size": generations, "gradient_accumulation_steps": 1,  # one prompt's group a step
        "max_steps": steps, "learning_rate": lr, "lr_scheduler": "constant", "optimizer": "adamw_torch",
        "logging_steps": 1, "save_strategy": "no", "seed": seed, "output_dir": str(work / "run"),
    }  # fmt: skip
    path = work / "grpo.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def run(cmd: list[str], log: Path) -> float:
    start = time.perf_counter()
    with log.open("w") as out:
        subprocess.run(cmd, check=True, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    return time.perf_counter() - start


def accuracy(run_dir: Path, held: Path, out: Path, base_only: bool) -> float:
    cmd = [*FINETUNE, "eval", str(run_dir), "--data", str(held), "--batch-size", "16", "--out", str(out)]
    cmd += ["--limit", str(LIMIT), "--max-new-tokens", "12"]
    run(cmd + (["--base-only"] if base_only else []), out.with_suffix(".log"))
    scores = json.loads((out / "eval_results.json").read_text())["generation"][held.stem]
    return scores["base" if base_only else "finetuned"]["accuracy"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/finetune_grpo_real"))
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--generations", type=int, default=8)
    ap.add_argument("--completion-length", type=int, default=8)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--window", type=int, default=10, help="Steps averaged for the start and end reward.")
    a = ap.parse_args()
    a.workdir.mkdir(parents=True, exist_ok=True)
    cfg = write_inputs(a.workdir, a.steps, a.generations, a.completion_length, a.lr, a.seed)
    wall = run([*FINETUNE, "train", str(cfg), "--overwrite"], a.workdir / "train.log")
    run_dir, held = a.workdir / "run", a.workdir / "heldout.jsonl"
    logs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rewards = [e["reward"] for e in logs if "reward" in e]
    kls = [e["kl"] for e in logs if "kl" in e]
    before = accuracy(run_dir, held, a.workdir / "eval_before", base_only=True)
    after = accuracy(run_dir, held, a.workdir / "eval_after", base_only=False)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    w = min(a.window, len(rewards) // 2)
    result = {
        "steps": len(rewards),
        "reward_first": rewards[0], "reward_last": rewards[-1],
        f"reward_first_{w}": sum(rewards[:w]) / w, f"reward_last_{w}": sum(rewards[-w:]) / w,
        "kl_last": kls[-1] if kls else None, "rewards": rewards,
        "eval_accuracy_before": before, "eval_accuracy_after": after,
        "train_wall_s": round(wall, 1), "peak_rss_mib": round(peak),
        "machine": f"{platform.processor() or platform.machine()}, 2-core CPU", "date": time.strftime("%Y-%m-%d"),
    }  # fmt: skip
    (a.workdir / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"| steps | reward, first {w} steps | reward, last {w} steps | eval acc before | after | train s | peak MiB |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {len(rewards)} | {result[f'reward_first_{w}']:.3f} | {result[f'reward_last_{w}']:.3f} | "
        f"{before:.3f} | {after:.3f} | {wall:.0f} | {peak:,.0f} |"
    )


if __name__ == "__main__":
    main()
