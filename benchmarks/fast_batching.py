"""What length-grouped batches (group_by_length; batch_flattening on CPU until 2026-12-08, which now flattens)
save on real_learning.py's run, measured without training a whole epoch: a figure of the batches alone, and a
cost per batch shape on the real model.

    python benchmarks/fast_batching.py                    # token slots for seeds 42 43 44, then the step costs
    python benchmarks/fast_batching.py --slots-only       # no model: the batches' padded tokens only

1. Token slots: the prepared FinLoRA rows (real_learning.py's 1,000) batched 16 at a time by HF's own samplers,
   random (`RandomSampler`'s order: a seeded permutation) and length-grouped (`get_length_grouped_indices`,
   what `LengthGroupedSampler` yields); slots = rows x longest row, summed over the epoch's 63 batches. No
   load on the machine can move these figures.
2. Step cost: forward + backward + optimizer step of SmolLM2-135M-Instruct with LoRA r16 on all linear layers
   (fp32, as real_learning.py trains) on batches of 16 rows (--rows) padded to L tokens, for several L, alternated round
   by round, timed in the process's own CPU seconds (on one thread, so no thread waits for another: on a shared
   machine CPU seconds move far less with other load than wall seconds do). A straight line
   cost = a + b x slots is fitted and applied to each epoch's batches: the predicted loop time of grouped over
   random batches. A quiet machine's whole-epoch runs (real_learning.py --variants script grouped) are the
   measurement this estimates.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_learning as rl  # noqa: E402

LENGTHS = (40, 80, 120, 185)  # fpb rows: p50 60, p99 106, longest 185 tokens


def epoch_batches(lengths: np.ndarray, seed: int) -> dict[str, list[np.ndarray]]:
    import torch
    from transformers.trainer_pt_utils import get_length_grouped_indices

    batch = rl.HYPER["micro_batch_size"]
    random = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(seed)).numpy()
    grouped = np.array(
        get_length_grouped_indices(lengths.tolist(), batch, generator=torch.Generator().manual_seed(seed))
    )
    return {
        k: [o[i : i + batch] for i in range(0, len(o), batch)]
        for k, o in (("random", random), ("grouped", grouped))
    }


def slots(batches: list[np.ndarray], lengths: np.ndarray) -> int:
    return sum(len(b) * int(lengths[b].max()) for b in batches)


def step_costs(model_dir: Path, rounds: int, rows: int) -> dict[int, list[float]]:
    """CPU seconds of one optimizer step on `rows` rows padded to L tokens, per L, `rounds` times each."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    model = get_peft_model(model, LoraConfig(r=rl.HYPER["lora_r"], lora_alpha=rl.HYPER["lora_alpha"],
                                             target_modules="all-linear", task_type="CAUSAL_LM"))  # fmt: skip
    model.train()
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    costs: dict[int, list[float]] = {n: [] for n in LENGTHS}
    ids = torch.randint(100, 40000, (rows, max(LENGTHS)))
    for r in range(rounds + 1):  # round 0 warms up (first-touch pages, kernels) and is not counted
        for n in LENGTHS if r % 2 else reversed(LENGTHS):
            batch = {
                "input_ids": ids[:, :n],
                "labels": ids[:, :n],
                "attention_mask": torch.ones_like(ids[:, :n]),
            }
            start = time.process_time()
            model(**batch).loss.backward()
            optim.step()
            optim.zero_grad()
            if r:
                costs[n].append(time.process_time() - start)
        print(f"round {r}: " + ", ".join(f"L={n}: {c[-1]:.2f} s" for n, c in costs.items() if c), flush=True)
    return costs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--slots-only", action="store_true")
    p.add_argument(
        "--rows", type=int, default=16,
        help="rows of the timed batches (8 halves the peak memory, ~6.5 GiB at 16: the cost per slot is the same)",
    )  # fmt: skip
    p.add_argument("--workdir", type=Path, default=Path("/tmp/real_learning"))
    a = p.parse_args()
    from transformers import AutoTokenizer

    from finetune import config, data
    from finetune.train.batching import dataset_lengths

    a.workdir.mkdir(parents=True, exist_ok=True)
    model, train, _ = rl.prepare(a.workdir, 1000)
    cfg = config.load(rl.finetune_config(a.workdir, "slots", model, train, a.seeds[0]))
    lengths = dataset_lengths(data.prepare(cfg, AutoTokenizer.from_pretrained(model)).train)
    epochs = {seed: epoch_batches(lengths, seed) for seed in a.seeds}
    print(
        "\n| seed | random: slots, padding | grouped: slots, padding | grouped / random slots |\n|---|---|---|---|"
    )
    for seed, e in epochs.items():
        s = {k: slots(v, lengths) for k, v in e.items()}
        pad = {k: 1 - lengths.sum() / v for k, v in s.items()}
        print(f"| {seed} | {s['random']:,}, {pad['random']:.1%} | {s['grouped']:,}, {pad['grouped']:.1%} | "
              f"{s['grouped'] / s['random']:.3f} |")  # fmt: skip
    if a.slots_only:
        return
    costs = step_costs(model, a.rounds, a.rows)
    xs = np.array([a.rows * n for n in LENGTHS], dtype=float)
    ys = np.array([statistics.median(costs[n]) for n in LENGTHS])
    b, c = np.polyfit(xs, ys, 1)
    print(f"\nstep CPU s = {c:.3f} + {b * 1000:.4f} x (thousand slots); medians "
          + ", ".join(f"L={n}: {y:.2f}" for n, y in zip(LENGTHS, ys, strict=True)))  # fmt: skip
    print("\n| seed | predicted loop CPU s, random | grouped | grouped / random |\n|---|---|---|---|")
    for seed, e in epochs.items():
        t = {k: sum(c + b * len(x) * int(lengths[x].max()) for x in v) for k, v in e.items()}
        print(f"| {seed} | {t['random']:.0f} | {t['grouped']:.0f} | {t['grouped'] / t['random']:.3f} |")


if __name__ == "__main__":
    main()
