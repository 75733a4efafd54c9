"""Preprocessing throughput: rows/s of the data stage on FinLoRA's formula_train.jsonl repeated to N rows.

    python benchmarks/preprocess_throughput.py [--rows 100000] [--processes 1 2]

Uses the tiny model's tokenizer (byte-level BPE, 1,024 tokens: more tokens per row than Llama 3's) and the
FinLoRA custom `[INST]` format. For each process count it times `data.build` (load, format, tokenize,
filter, split; nothing written) and `data.prepare` (the same plus save_to_disk), then a cache hit.
Needs ../shared/data/finlora/formula_train.jsonl.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FORMULA = ROOT.parent / "shared" / "data" / "finlora" / "formula_train.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from finetune import config, data
    from finetune.data.tokenizer import load_tokenizer
    from finetune.model.tiny import write_tiny_model

    lines = [line for line in FORMULA.read_text().splitlines() if line.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows = (lines * (args.rows // len(lines) + 1))[: args.rows]
        source = tmp / "formula_x.jsonl"
        source.write_text("\n".join(rows) + "\n")
        model = write_tiny_model(tmp / "tiny")
        print(
            f"{args.rows:,} rows ({source.stat().st_size / 1e6:.1f} MB) from {FORMULA.name}; "
            f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, Python {platform.python_version()}"
        )
        for processes in args.processes:
            raw = {
                "base_model": str(model),
                "adapter": "lora",
                "sequence_len": 2048,
                "val_set_size": 0.02,
                "dataset_processes": processes,
                "dataset_prepared_path": str(tmp / f"prepared{processes}"),
                "datasets": [
                    {
                        "path": str(source),
                        "type": {
                            "field_instruction": "context",
                            "field_output": "target",
                            "format": "[INST] {instruction} [/INST]",
                            "no_input_format": "[INST] {instruction} [/INST]",
                        },
                    }
                ],
            }
            cfg = config.validate(raw)
            tokenizer = load_tokenizer(cfg)
            start = time.perf_counter()
            _, _, stats = data.build(cfg, tokenizer, show_progress=False)
            built = time.perf_counter() - start
            start = time.perf_counter()
            data.prepare(cfg, tokenizer)
            prepared = time.perf_counter() - start
            start = time.perf_counter()
            data.prepare(cfg, tokenizer)
            hit = time.perf_counter() - start
            tokens = stats["tokens"] + stats["eval_tokens"]
            print(
                f"dataset_processes={processes}: build {args.rows / built:,.0f} rows/s ({tokens / built:,.0f} tokens/s, "
                f"{built:.1f} s); prepare with save {args.rows / prepared:,.0f} rows/s ({prepared:.1f} s); "
                f"cache hit {hit:.2f} s"
            )


if __name__ == "__main__":
    main()
