"""`finetune data` on 100k rows: how long the data report takes, and whether it finds what was planted.

    python benchmarks/data_report.py [--rows 100000] [--processes 1] [--command]

Two sources in FinLoRA's shape, with sentences drawn from the words of ../shared/data/finlora (so the words
are real, the rows unique): ~72% sentiment rows ("Instruction: What is the sentiment ... Input: <15-40
words> Answer:" -> negative/neutral/positive, as fpb_test.jsonl) and ~28% formula-style rows (80-200 words, a
number as the answer). Planted in the sentiment source: 600 rows of fpb_test.jsonl (the --against file), 1,000
exact repeats (upper case, doubled spaces) and 1,000 paraphrases (one word replaced, one inserted);
val_set_size 0.02. Times, separately: preparing the data (tokenize, filter, split, save: what `finetune
preprocess` does), the report (decode, duplicates, MinHash, overlap) and writing data_report.{json,md,png};
then the report again on the cached data. Each time is wall-clock, with the CPU seconds of this process and its
workers beside it (on a shared machine the wall time moves with the load, the CPU time much less). Uses the tiny model's tokenizer (byte-level, 1,024 tokens: more
tokens a row than Llama 3's, so a conservative figure). Needs ../shared/data/finlora (or $FINETUNE_SHARED).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FINLORA = Path(os.environ.get("FINETUNE_SHARED", ROOT.parent / "shared")) / "data" / "finlora"
SENTIMENT = "Instruction: What is the sentiment of this news? Please choose an answer from {negative/neutral/positive}.\nInput: "  # fmt: skip
PLANT_AGAINST, PLANT_EXACT, PLANT_NEAR = 600, 1000, 1000


def make_rows(n: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(sentiment rows with the planted ones, formula-style rows): n rows in all."""
    rng = random.Random(seed)
    text = " ".join(p.read_text() for p in sorted(FINLORA.glob("*.jsonl")))
    vocab = sorted(set(re.findall(r"[A-Za-z][A-Za-z'-]+|\d+(?:\.\d+)?", text)))
    fpb = [json.loads(line) for line in (FINLORA / "fpb_test.jsonl").read_text().splitlines() if line.strip()]

    def words(lo: int, hi: int) -> list[str]:
        return rng.choices(vocab, k=rng.randint(lo, hi))

    n_formula = int(n * 0.28)
    n_sentiment = n - n_formula - PLANT_AGAINST - PLANT_EXACT - PLANT_NEAR
    sentiment = [
        {"context": f"{SENTIMENT}{' '.join(words(15, 40))} .\nAnswer: ", "target": rng.choice(("negative", "neutral", "positive"))}
        for _ in range(n_sentiment)
    ]  # fmt: skip
    formula = [
        {"context": f"Use formula {' '.join(words(80, 200))}", "target": f"{rng.uniform(1, 1e5):.2f}"}
        for _ in range(n_formula)
    ]
    exact = [
        {"context": r["context"].upper().replace(" ", "  "), "target": r["target"]}
        for r in rng.sample(sentiment, PLANT_EXACT)
    ]
    near = []
    for r in rng.sample(sentiment, PLANT_NEAR):
        head, sentence = r["context"].split("Input: ")
        w = sentence.split(" ")
        w[rng.randrange(len(w) - 2)] = rng.choice(vocab)
        w.insert(rng.randrange(len(w) - 2), rng.choice(vocab))
        near.append({"context": f"{head}Input: {' '.join(w)}", "target": r["target"]})
    planted = sentiment + rng.sample(fpb, PLANT_AGAINST) + exact + near
    rng.shuffle(planted)
    return planted, formula


def _cpu() -> float:
    """CPU seconds so far of this process (all its threads) and of its finished worker processes."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument(
        "--command", action="store_true", help="also time `finetune data` itself, start to end"
    )
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from finetune import config, data
    from finetune.data import analysis, report_files
    from finetune.data.tokenizer import load_tokenizer
    from finetune.model.tiny import write_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = []
        for name, rows in zip(("sentiment", "formula"), make_rows(args.rows), strict=True):
            files.append(tmp / f"{name}.jsonl")
            files[-1].write_text("".join(json.dumps(r) + "\n" for r in rows))
        fmt = {
            "field_instruction": "context",
            "field_output": "target",
            "format": "[INST] {instruction} [/INST]",
        }
        raw = {
            "base_model": str(write_tiny_model(tmp / "tiny")),
            "adapter": "lora",
            "sequence_len": 1024,
            "val_set_size": 0.02,
            "dataset_processes": args.processes,
            "dataset_prepared_path": str(tmp / "prepared"),
            "datasets": [{"path": str(f), "type": fmt} for f in files],
        }
        cfg = config.validate(raw)
        tokenizer = load_tokenizer(cfg)
        load = os.getloadavg()[0]
        print(
            f"{args.rows:,} rows ({sum(f.stat().st_size for f in files) / 1e6:.1f} MB) in two sources; "
            f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, Python "
            f"{platform.python_version()}, load average {load:.1f} at the start"
        )
        start, cpu0 = time.perf_counter(), _cpu()
        prepared = data.prepare(cfg, tokenizer)
        prepare_s, cpu1 = time.perf_counter() - start, _cpu()
        start = time.perf_counter()
        found = analysis.analyse(cfg, tokenizer, prepared.path, [str(FINLORA / "fpb_test.jsonl")])
        analyse_s, cpu2 = time.perf_counter() - start, _cpu()
        start = time.perf_counter()
        report_files.write(prepared.path, found.report)
        write_s, cpu3 = time.perf_counter() - start, _cpu()
        start = time.perf_counter()
        analysis.analyse(cfg, tokenizer, data.load_prepared(prepared.path, with_source=True).path)
        again_s, cpu4 = time.perf_counter() - start, _cpu()

        r = found.report
        [against] = r["overlap"]["against"]
        print(
            f"prepare (tokenize, filter, split, save) {prepare_s:.1f} s (CPU {cpu1 - cpu0:.1f} s); report "
            f"{analyse_s:.1f} s (CPU {cpu2 - cpu1:.1f} s); write json/md/png {write_s:.1f} s (CPU {cpu3 - cpu2:.1f} s); "
            f"total {prepare_s + analyse_s + write_s:.1f} s (CPU {cpu3 - cpu0:.1f} s)"
        )
        print(
            f"report on the cached data alone (no --against): {again_s:.1f} s (CPU {cpu4 - cpu3:.1f} s); "
            f"load average now {os.getloadavg()[0]:.1f}"
        )
        print(
            f"found: {r['train']['rows']:,} train rows, {r['eval']['rows']:,} eval rows; exact repeats "
            f"{r['exact_duplicates']['rows']} (planted {PLANT_EXACT}, the eval split took ~2%), near {r['near_duplicates']['rows']} "
            f"(planted {PLANT_NEAR}); fpb_test rows in training: {against['exact_rows']} exact, "
            f"{against['ngram_rows']} by 13-gram (planted {PLANT_AGAINST}, ~2% of them went to the eval split)"
        )
        print("labels of the sentiment source:", r["sources"][0]["labels"])
        if args.command:  # the whole command as a user runs it: a new process, an empty cache
            import subprocess
            import sys

            import yaml

            path = tmp / "config.yaml"
            path.write_text(yaml.safe_dump({**raw, "dataset_prepared_path": str(tmp / "fresh")}))
            finetune = Path(sys.executable).parent / "finetune"
            against = str(FINLORA / "fpb_test.jsonl")
            start = time.perf_counter()
            done = subprocess.run(
                [finetune, "data", str(path), "--against", against, "--json"], capture_output=True
            )
            wall = time.perf_counter() - start
            assert done.returncode == 0, done.stderr.decode()[-2000:]
            print(
                f"`finetune data CONFIG --against fpb_test.jsonl --json`, empty cache, new process: {wall:.1f} s"
            )


if __name__ == "__main__":
    main()
