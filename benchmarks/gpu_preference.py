"""Reward model and DPO through `finetune train` on a GPU: they run, their metrics move, DPO holds no second model
copy, and both merge (random weights with a real model shape, nothing downloaded).

    python benchmarks/gpu_preference.py --shape 1b          # Llama-3.2-1B shape, QLoRA, bf16 (a lent GPU)
    python benchmarks/gpu_preference.py --shape tiny        # the same checks on the tiny model, on CPU

Pairs come from FinLoRA's fpb_test.jsonl when ../shared is there (the right sentiment chosen, a wrong one
rejected), else from examples/finance_preferences.jsonl. For each kind (reward, dpo) the script runs the real
CLI, then prints steps/s, real tokens/s, peak GPU memory and the final metrics, and checks:

- reward: eval accuracy above chance (0.5); DPO: rewards/accuracies and margins up from the first logged step;
- memory: building the DPO trainer around the loaded 4-bit model allocates less than a tenth of the model's own
  GPU footprint (a second copy of the model as reference would add a whole one);
- `finetune merge --dequantize` of both: the saved model scores/logits as base + adapter (|diff| printed).
Exit status 1 when a check fails. Random weights learn a label prior, not text: this checks mechanics.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FPB = ROOT.parent / "shared" / "data" / "finlora" / "fpb_test.jsonl"
LABELS = ("negative", "neutral", "positive")
SHOWN = ("eval_loss", "eval_accuracy", "eval_margin", "eval_rewards/accuracies", "eval_rewards/margins")


def write_pairs(folder: Path) -> tuple[Path, dict]:
    """(pairs file, the `type:` dict that reads it)."""
    path = folder / "pairs.jsonl"
    if FPB.is_file():
        rng = random.Random(0)
        rows = [json.loads(line) for line in FPB.read_text().splitlines() if line.strip()]
        pairs = [{**r, "wrong": rng.choice([x for x in LABELS if x != r["target"]])} for r in rows]
        path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
        return path, {"field_prompt": "context", "field_chosen": "target", "field_rejected": "wrong"}
    rows = (ROOT / "examples" / "finance_preferences.jsonl").read_text().splitlines() * 8
    path.write_text("\n".join(rows) + "\n")
    return path, {"field_prompt": "prompt", "field_chosen": "chosen", "field_rejected": "rejected"}


def write_config(folder: Path, kind: str, base: Path, pairs: Path, pair_type: dict, steps: int) -> Path:
    import yaml

    cfg = {
        "base_model": str(base), "adapter": "qlora", "load_in_4bit": True, "lora_r": 16, "lora_alpha": 32,
        "lora_target_linear": True, "datasets": [{"path": str(pairs), "type": pair_type}], "val_set_size": 64,
        "sequence_len": 512, "max_prompt_len": 384, "dataset_prepared_path": str(folder / "prepared"),
        "output_dir": str(folder / kind), "micro_batch_size": 8, "max_steps": steps, "learning_rate": 1e-4,
        "lr_scheduler": "constant", "logging_steps": 5, "eval_steps": steps, "save_strategy": "no", "seed": 0,
        **({"reward_model": True} if kind == "reward" else {"rl": "dpo", "rl_beta": 0.1}),
    }  # fmt: skip
    path = folder / f"{kind}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def dpo_construction_mb(cfg_path: Path) -> tuple[float, float]:
    """(GPU MiB of the loaded 4-bit policy, GPU MiB allocated by building the DPOTrainer around it)."""
    import torch

    from finetune import config, data
    from finetune import model as model_module
    from finetune.data.tokenizer import load_tokenizer
    from finetune.train import arguments as trainer_args
    from finetune.train import preference as rl

    cfg = config.load(cfg_path)
    tokenizer = load_tokenizer(cfg)
    prepared = data.prepare(cfg, tokenizer)
    torch.cuda.empty_cache()
    start = torch.cuda.memory_allocated()
    loaded = model_module.load(cfg, tokenizer)
    loaded_at = torch.cuda.memory_allocated()
    prec = model_module.precision(cfg)
    args, _ = trainer_args.training_arguments(cfg, prec, len(prepared.train), True, cfg.output_dir, [])
    trainer = rl.build_trainer(cfg, args, loaded.model, tokenizer, prepared.train, prepared.eval, [])
    built = torch.cuda.memory_allocated()
    assert trainer.ref_model is None and sorted(trainer.model.peft_config) == ["default"]
    return (loaded_at - start) / 2**20, (built - loaded_at) / 2**20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=("1b", "8b", "tiny"), default="1b")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/finetune-gpu-preference"))
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    base = args.workdir / f"model-{args.shape}"
    if args.shape == "tiny":
        from finetune.model.tiny import write_tiny_model

        write_tiny_model(base)
    else:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from gpu_qlora import write_model  # a random model with the real shape, written once

        write_model(args.shape, base)
    pairs, pair_type = write_pairs(args.workdir)
    failures, results = [], {}
    for kind in ("reward", "dpo"):
        cfg = write_config(args.workdir, kind, base, pairs, pair_type, args.steps)
        start = time.time()
        subprocess.run(["finetune", "train", str(cfg), "--overwrite"], check=True)
        out = args.workdir / kind
        res = json.loads((out / "all_results.json").read_text())
        log = json.loads((out / "trainer_state.json").read_text())["log_history"]
        results[kind] = res
        print(
            f"{kind}: {time.time() - start:.0f}s wall, {res['global_step'] / res['train_runtime']:.2f} steps/s, "
            f"{res.get('train_tokens_per_second') or 0:,.0f} real tokens/s, peak GPU "
            f"{res.get('peak_gpu_memory_mb', 0):,.0f} MiB; "
            + ", ".join(f"{k}={res[k]:.4f}" for k in SHOWN if k in res)
        )
        if kind == "reward" and not res["eval_accuracy"] > 0.5:
            failures.append(f"reward: eval accuracy {res['eval_accuracy']:.3f} is not above chance")
        if kind == "dpo":
            train = [e for e in log if "rewards/accuracies" in e]
            if not (
                train[-1]["rewards/margins"] > train[0]["rewards/margins"] and train[0]["rewards/chosen"] == 0
            ):
                failures.append("dpo: margins did not rise from a zero start (reference != initial policy?)")
        merged = args.workdir / f"{kind}-merged"
        check = subprocess.run(
            ["finetune", "merge", str(out), "--out", str(merged), "--dequantize", "--overwrite"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        print(f"{kind} merge: {check.stdout.strip().splitlines()[-2]}")
    import torch

    if torch.cuda.is_available():
        footprint, extra = dpo_construction_mb(args.workdir / "dpo.yaml")
        print(
            f"DPO: the 4-bit policy takes {footprint:,.0f} MiB; building the trainer added {extra:,.0f} MiB"
        )
        if extra > footprint / 10:
            failures.append(
                f"dpo: building the trainer allocated {extra:.0f} MiB (a model copy is {footprint:.0f})"
            )
    for line in failures:
        print(f"FAIL {line}")
    print("OK" if not failures else f"{len(failures)} check(s) failed")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
