"""GPU throughput and memory of `finetune train` on real model shapes (random weights, nothing downloaded).

    python benchmarks/gpu_qlora.py --shape 8b --mode qlora      # Llama-3.1-8B shape, 4-bit NF4 base
    python benchmarks/gpu_qlora.py --shape 8b --mode lora       # same, bf16 base
    python benchmarks/gpu_qlora.py --shape 1b --mode qlora --deepspeed zero2
    python benchmarks/gpu_qlora.py --shape 8b --mode qlora --fsdp --processes 2   # FSDP2-QLoRA on 2 GPUs

For a lent GPU machine (CUDA needed). The script writes a randomly initialised Llama model with the real
dimensions to --workdir (once per shape), rows that fill the whole sequence (so every batch is full, as a
packed batch is), and a config with LoRA r=16 on all linear layers; then it runs the real `finetune train`
on it and prints real tokens/s over the steady-state steps (the first --skip steps are warm-up), peak GPU
memory and MFU, each beside `finetune plan`'s prediction for the same config. `--base-model PATH` trains a local
folder of real weights of the shape instead (downloaded beforehand; nothing is fetched here). MFU counts the model FLOPs of LoRA training: 4N per token for the frozen matmuls
(forward + input gradients; no weight gradients) plus causal attention, without recomputation.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

SHAPES = {  # Llama 3.1 / 3.2 dimensions
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False),
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=True),
}  # fmt: skip
VOCAB = 128256
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def write_model(shape: str, folder: Path, weights: bool = True) -> None:
    """A random model with the real shape (on the GPU), saved once; weights=False: config.json and the tokenizer
    only, which is all `finetune validate` and `finetune plan` read (gpu_check.py --dry-run, on CPU)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from finetune.model.tiny import build_tokenizer

    if any(folder.glob("model*.safetensors")) or (not weights and (folder / "config.json").exists()):
        return
    config = LlamaConfig(
        vocab_size=VOCAB, max_position_embeddings=131072, rope_theta=500000.0, **SHAPES[shape]
    )
    if not weights:
        config.save_pretrained(folder)
        build_tokenizer().save_pretrained(folder)
        return
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    start = time.time()
    model.save_pretrained(folder, max_shard_size="5GB")
    build_tokenizer().save_pretrained(folder)  # ids < VOCAB, so any tokenizer this small works
    print(f"wrote random {shape} model to {folder} in {time.time() - start:.0f}s", flush=True)
    del model
    torch.cuda.empty_cache()


def write_rows(path: Path, rows: int) -> None:
    """Rows longer than any sequence here; truncation cuts each to exactly sequence_len tokens."""
    from importlib import resources

    text = resources.files("finetune").joinpath("assets/tiny_corpus.txt").read_text()
    with path.open("w") as f:
        for i in range(rows):
            f.write(json.dumps({"text": f"row {i}. " + text[i % 500 :] + text}) + "\n")


def linear_params(shape: str) -> int:
    s = SHAPES[shape]
    d, f, layers = s["hidden_size"], s["intermediate_size"], s["num_hidden_layers"]
    kv = d // s["num_attention_heads"] * s["num_key_value_heads"]
    per_layer = d * d * 2 + d * kv * 2 + 3 * d * f
    return layers * per_layer + d * VOCAB  # + lm_head


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="8b")
    parser.add_argument("--mode", choices=["qlora", "lora"], default="qlora")
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--micro-batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--skip", type=int, default=5, help="warm-up steps left out of tokens/s")
    parser.add_argument("--gradient-checkpointing", choices=["true", "false"], default="true")
    parser.add_argument("--deepspeed", choices=["none", "zero2", "zero3"], default="none")
    parser.add_argument("--fsdp", action="store_true", help="FSDP2 (fsdp_version: 2) across --processes")
    parser.add_argument("--processes", type=int, default=1, help="processes = GPUs (torchrun underneath)")
    parser.add_argument("--attn", default="sdpa")
    parser.add_argument(
        "--liger", action="store_true", help="Liger kernels: RoPE, RMSNorm, SwiGLU, fused linear CE"
    )
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/finetune-bench"))
    parser.add_argument(
        "--base-model",
        type=Path,
        help="a local HF folder of real weights of this shape (e.g. Llama-3.1-8B, downloaded beforehand); "
        "default: random weights built from the shape's config on the GPU (nothing is downloaded)",
    )
    return parser


def run_name(args) -> str:
    run = f"{args.shape}-{args.mode}-{args.deepspeed}-gc{args.gradient_checkpointing}{'-liger' if args.liger else ''}"
    return run + f"{'-fsdp' if args.fsdp else ''}-p{args.processes}"


def build_config(args) -> dict:
    """The config this benchmark trains (gpu_check.py --dry-run validates the same dict)."""
    model_dir = args.base_model or args.workdir / f"llama-{args.shape}-random"
    config = {
        "base_model": str(model_dir),
        "load_in_4bit": args.mode == "qlora",
        "adapter": args.mode,
        "lora_r": 16,
        "lora_alpha": 32,
        "lora_target_linear": True,
        "datasets": [{"path": str(args.workdir / "rows.jsonl"), "type": "completion", "field": "text"}],
        "sequence_len": args.seq,
        "excess_length_strategy": "truncate",
        "dataset_prepared_path": str(args.workdir / "prepared"),
        "micro_batch_size": args.micro_batch,
        "gradient_accumulation_steps": 1,
        "max_steps": args.steps,
        "learning_rate": 1e-4,
        "optimizer": "adamw_torch_fused" if args.mode == "lora" else "paged_adamw_8bit",
        "bf16": True,
        "gradient_checkpointing": args.gradient_checkpointing == "true",
        "gradient_checkpointing_kwargs": {"use_reentrant": False},
        "attn_implementation": args.attn,
        "logging_steps": 1,
        "save_strategy": "no",
        "output_dir": str(args.workdir / run_name(args)),
    }
    if args.liger:
        config.update(
            liger_rope=True,
            liger_rms_norm=True,
            liger_glu_activation=True,
            liger_fused_linear_cross_entropy=True,
        )
    if args.deepspeed != "none":
        config["deepspeed"] = str(
            Path(__file__).resolve().parent.parent / "deepspeed_configs" / f"{args.deepspeed}.json"
        )
    if args.fsdp:
        config.update(
            fsdp_version=2,
            fsdp_config={"reshard_after_forward": True, "state_dict_type": "SHARDED_STATE_DICT"},
        )
    return config


def main() -> None:
    args = parser().parse_args()

    import torch
    import yaml

    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.base_model is None:
        write_model(args.shape, args.workdir / f"llama-{args.shape}-random")
    write_rows(args.workdir / "rows.jsonl", args.micro_batch * args.steps + 8)
    run = run_name(args)
    out = args.workdir / run
    config = build_config(args)
    cfg_path = args.workdir / f"{run}.yaml"
    cfg_path.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "finetune.cli", "train", str(cfg_path), "--overwrite"]
    if args.deepspeed != "none" or args.processes > 1:
        command += ["--num-processes", str(args.processes)]
    start = time.time()
    proc = subprocess.run(command, env={**os.environ, "WANDB_MODE": "disabled"})
    wall = time.time() - start
    if proc.returncode != 0:
        sys.exit(f"finetune train failed ({proc.returncode})")

    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [e for e in events if "loss" in e and "train_runtime" in e and "num_input_tokens_seen" in e]
    results = json.loads((out / "all_results.json").read_text())
    steady = steps[args.skip :]
    if len(steady) >= 2:  # real tokens over the seconds between the first and last steady-state step
        tokens = steady[-1]["num_input_tokens_seen"] - steady[0]["num_input_tokens_seen"]
        tps = tokens / (steady[-1]["train_runtime"] - steady[0]["train_runtime"])
    else:
        tps = results.get("train_tokens_per_second", float("nan"))
    s = SHAPES[args.shape]
    flops_per_token = 4 * linear_params(args.shape) + 6 * s["num_hidden_layers"] * args.seq * s["hidden_size"]
    name = torch.cuda.get_device_name()
    from finetune import config as config_module
    from finetune import plan

    props = torch.cuda.get_device_properties(0)
    predicted = plan.estimate(
        config_module.load(cfg_path), plan.devices.from_name(name, props.total_memory / plan.devices.GIB)
    )
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), float("nan"))
    mfu = tps * flops_per_token / (peak * 1e12)
    print(
        json.dumps(
            {
                "run": run,
                "device": name,
                "tokens_per_s_steady": round(tps, 1),
                "train_tokens_per_second_all_steps": results.get("train_tokens_per_second"),
                "peak_gpu_mem_gib": round(results.get("peak_gpu_memory_mb", float("nan")) / 1024, 2),
                # finetune plan's prediction, the same measure (torch.cuda.max_memory_allocated)
                "predicted_peak_gpu_mem_gib": round(predicted.allocated_gib, 2),
                "predicted_tokens_per_s": round(predicted.speed["tokens_per_second"], 1),
                "mfu": round(mfu, 3),
                "final_loss": steps[-1]["loss"] if steps else None,
                "distributed_type": results.get("distributed_type"),
                "batching": results.get("batching", results.get("batching_strategy")),
                "wall_s": round(wall, 1),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
