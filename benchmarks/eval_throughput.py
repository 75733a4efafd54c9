"""`finetune eval` throughput: examples/s of batched greedy generation on FinLoRA's fpb_test.jsonl, on CPU.

    python benchmarks/eval_throughput.py [--rows 96] [--batch-sizes 1 8 32] [--sizes tiny small] [--steps 30]

For each model size it trains a QLoRA adapter (--steps, 30 by default) on fpb rows in FinLoRA's `[INST]`
custom format, so the run folder is a real one and the answers are a trained classifier's (a label, then
EOS), then runs `evaluate.run` on the first --rows rows of fpb_test.jsonl at each batch size. examples/s
counts generation only (loading is in total_s_with_loading). max_new_tokens is auto (longest label + 16);
mean_answer_tokens re-tokenizes the answers (exact for label words, approximate for random text).
Sizes: tiny = finetune.model.tiny defaults (hidden 64, 2 layers, ~0.2M parameters); small = hidden 512,
8 layers (~25M parameters). Needs ../shared/data/finlora/fpb_test.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FPB = ROOT.parent / "shared" / "data" / "finlora" / "fpb_test.jsonl"
SIZES = {
    "tiny": {},
    "small": {"hidden_size": 512, "layers": 8, "heads": 8, "kv_heads": 4, "intermediate_size": 1536},
}
INST = {
    "field_instruction": "context",
    "field_output": "target",
    "format": "[INST] {instruction} [/INST]",
    "no_input_format": "[INST] {instruction} [/INST]",
}


def train_run(tmp: Path, size: str, steps: int) -> Path:
    from finetune import config, train
    from finetune.model.tiny import write_tiny_model

    model = write_tiny_model(tmp / f"model-{size}", **SIZES[size])
    cfg = config.validate({
        "base_model": str(model), "load_in_4bit": True, "adapter": "qlora", "lora_r": 8, "lora_alpha": 16,
        "lora_target_linear": True, "datasets": [{"path": str(FPB), "type": INST}], "sequence_len": 512,
        "dataset_prepared_path": str(tmp / "prepared"), "output_dir": str(tmp / f"run-{size}"),
        "micro_batch_size": 4, "max_steps": steps, "learning_rate": 1e-2, "seed": 0,
    })  # fmt: skip
    return train.run(cfg)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=96)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--steps", type=int, default=30, help="training steps before evaluating")
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch
    from rich.console import Console

    from finetune.inference import evaluate

    quiet = Console(file=open(os.devnull, "w"))  # noqa: SIM115 - the per-run tables are not the figures
    print(
        f"{args.rows} rows of {FPB.name}; {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}, load average {os.getloadavg()[0]:.2f}"
    )
    from transformers import AutoTokenizer

    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            torch.set_num_threads(threads)  # model.cpu_threads drops a tiny model to one thread: not the next
            run = train_run(Path(tmp), size, args.steps)
            tok = AutoTokenizer.from_pretrained(run)
            for batch in args.batch_sizes:
                started = time.perf_counter()
                entry = evaluate.run(run, FPB, limit=args.rows, batch_size=batch, console=quiet)
                total = time.perf_counter() - started
                preds = [json.loads(x) for x in (run / entry["predictions"]).read_text().splitlines()]
                row = {
                    "size": size,
                    "batch_size": batch,
                    "threads": torch.get_num_threads(),
                    "examples_per_second": entry["examples_per_second"],
                    "generation_s": entry["seconds"],
                    "total_s_with_loading": round(total, 2),
                    "max_new_tokens": entry["max_new_tokens"],
                    "mean_answer_tokens": round(
                        sum(len(tok(p["prediction"], add_special_tokens=False)["input_ids"]) for p in preds)
                        / len(preds),
                        1,
                    ),
                }
                print(json.dumps(row), flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
