"""The training half of the model card: the hyperparameters HF's Trainer reports, the final evaluation,
the run summary, and the training-results table (HF's layout: one row per evaluation).
"""

from __future__ import annotations

import math

from finetune import methods
from finetune.outputs.run_dir import Run, fact

_NOT_DISTRIBUTED = {"", "no", "none", "not_parallel", "not_distributed"}
_EVAL_NOISE = {
    "runtime", "samples_per_second", "steps_per_second", "epoch", "step",
    # TRL's trainers (DPO, reward models) also log these; the card keeps rewards, margins and accuracy
    "num_tokens", "entropy", "mean_token_accuracy", "logits/chosen", "logits/rejected", "logps/chosen",
    "logps/rejected", "min_reward", "mean_reward", "max_reward",
}  # fmt: skip
# all_results.json keys shown under Results, with their labels (peak memory keys are added as they are).
_SUMMARY = {
    "train_loss": "training loss (mean over the run)",
    "final_train_loss": "training loss (last logged)",
    "global_step": "optimizer steps",
    "train_tokens": "training tokens",
    "train_runtime": "runtime (s)",
    "train_samples_per_second": "samples/s",
    "train_tokens_per_second": "tokens/s",
    "peak_gpu_memory_mb": "peak GPU memory (MiB)",
    "peak_cpu_memory_mb": "peak CPU memory (MiB)",
    "predicted_peak_gpu_memory_mb": "predicted peak GPU memory (MiB, finetune plan)",
    "predicted_peak_cpu_memory_mb": "predicted peak CPU memory (MiB, finetune plan)",
}


def eval_metrics(run: Run) -> dict[str, float]:
    """Final evaluation, `eval_` prefix removed: eval_results.json / all_results.json, else the last eval log."""
    source = {k: v for k, v in run.results.items() if k.startswith("eval_")}
    if not source:
        source = next((e for e in reversed(run.state.get("log_history", [])) if "eval_loss" in e), {})
    out = {k.removeprefix("eval_"): v for k, v in source.items() if k.startswith("eval_")}
    return {k: v for k, v in out.items() if k not in _EVAL_NOISE and isinstance(v, int | float)}


def _column(key: str) -> str:
    return " ".join(part.capitalize() for part in key.removeprefix("eval_").split("_"))


def training_rows(log_history: list[dict], log_keys: tuple[str, ...] = ()) -> list[dict]:
    """HF's training-results table: one row per evaluation, joined with the latest training loss logged at
    or before its step (the Trainer logs `loss` and `eval_loss` as separate entries). Without evaluations,
    one row per logged training loss, with the `log_keys` metrics logged beside it (DPO's rewards/...)."""
    train = sorted((e["step"], e["loss"]) for e in log_history if "loss" in e and "step" in e)
    evals = [e for e in log_history if "eval_loss" in e]
    if not evals:
        logs = [e for e in log_history if "loss" in e]
        return [
            {
                "Training Loss": e["loss"], "Epoch": e.get("epoch"), "Step": e.get("step"),
                **{_column(k): e[k] for k in log_keys if k in e},
            }
            for e in logs
        ]  # fmt: skip
    rows = []
    for e in evals:
        before = [loss for step, loss in train if step <= e.get("step", 0)]
        row = {
            "Training Loss": before[-1] if before else "No log",
            "Epoch": e.get("epoch"),
            "Step": e.get("step"),
        }
        row["Validation Loss"] = e["eval_loss"]
        for k, v in e.items():
            if k.startswith("eval_") and k != "eval_loss" and k.removeprefix("eval_") not in _EVAL_NOISE:
                row[_column(k)] = v
        rows.append(row)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    return [{c: r.get(c, "") for c in columns} for r in rows]


def fmt(value) -> str:
    """Numbers as HF's cards print them: floats with more than 4 decimals rounded to 4."""
    if isinstance(value, float):
        text = repr(value)
        return f"{value:.4f}" if "." in text and "e" not in text and len(text.split(".")[1]) > 4 else text
    return "" if value is None else str(value)


def markdown_table(rows: list[dict]) -> str:
    if not rows:
        return ""
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(":---:" for _ in head) + "|"]
    lines += ["| " + " | ".join(fmt(r[c]) for c in head) + " |" for r in rows]
    return "\n".join(lines)


def hyperparameters(run: Run) -> dict:
    """The hyperparameters HF's Trainer reports in its cards, plus the adapter and quantization."""
    cfg, ad = run.cfg, run.adapter
    batch = run.state.get("train_batch_size") or cfg.micro_batch_size
    world = fact(run, "world_size") or 1
    hp: dict = {"learning_rate": cfg.learning_rate, "train_batch_size": batch}
    hp["eval_batch_size"] = cfg.eval_batch_size or cfg.micro_batch_size
    hp["seed"] = cfg.seed
    distributed = fact(run, "distributed_type")
    if distributed is not None and str(distributed).lower() not in _NOT_DISTRIBUTED:
        hp["distributed_type"] = distributed
    if fact(run, "zero_stage") is not None:
        hp["deepspeed_zero_stage"] = fact(run, "zero_stage")
    if fact(run, "fsdp_version") is not None:
        hp["fsdp_version"] = fact(run, "fsdp_version")
    if world > 1:
        hp["num_devices"] = world
    if cfg.gradient_accumulation_steps > 1:
        hp["gradient_accumulation_steps"] = cfg.gradient_accumulation_steps
    total = fact(run, "total_train_batch_size") or batch * world * cfg.gradient_accumulation_steps
    budget_tokens = fact(run, "total_train_batch_tokens")
    if budget_tokens:  # token-budget batches (sample_packing): a batch's row count varies, its tokens do not
        hp["train_batch_size"] = f"{fact(run, 'batch_token_budget'):,} tokens (token-budget batches)"
        rows = fact(run, "mean_rows_per_step")
        hp["total_train_batch_size"] = f"{budget_tokens:,} tokens" + (f" (~{rows} rows)" if rows else "")
    elif total != batch:
        hp["total_train_batch_size"] = total
    if "adam" in cfg.optimizer:
        betas = f"({cfg.adam_beta1 or 0.9},{cfg.adam_beta2 or 0.999})"
        hp["optimizer"] = f"{cfg.optimizer} with betas={betas} and epsilon={cfg.adam_epsilon or 1e-08}"
    else:
        hp["optimizer"] = cfg.optimizer
    if cfg.weight_decay:
        hp["weight_decay"] = cfg.weight_decay
    if cfg.loraplus_lr_ratio is not None:
        hp["loraplus_lr_ratio"] = cfg.loraplus_lr_ratio
    if cfg.neftune_noise_alpha is not None:
        hp["neftune_noise_alpha"] = cfg.neftune_noise_alpha
    hp["lr_scheduler_type"] = cfg.lr_scheduler
    if cfg.eta_min is not None:
        hp["lr_scheduler_min_lr"] = cfg.eta_min
    elif cfg.cosine_min_lr_ratio is not None:
        hp["lr_scheduler_min_lr"] = cfg.cosine_min_lr_ratio * cfg.learning_rate
    warmup = cfg.warmup_steps
    if warmup is not None and warmup >= 1:
        hp["lr_scheduler_warmup_steps"] = int(warmup)
    elif warmup or cfg.warmup_ratio:
        hp["lr_scheduler_warmup_ratio"] = warmup or cfg.warmup_ratio
    max_steps = cfg.max_steps if cfg.max_steps and cfg.max_steps > 0 else None
    if max_steps:
        hp["training_steps"] = max_steps
    else:
        hp["num_epochs"] = cfg.num_epochs
    precision = fact(run, "mixed_precision")
    if precision is None:
        precision = (
            "fp16"
            if cfg.fp16
            else "bf16"
            if cfg.bf16 is True
            else "bf16 where supported"
            if cfg.bf16
            else None
        )
    if precision and str(precision).lower() not in ("no", "fp32"):
        hp["mixed_precision_training"] = precision
    hp["max_sequence_length"] = cfg.sequence_len
    if cfg.gradient_checkpointing:
        hp["gradient_checkpointing"] = cfg.gradient_checkpointing
    if cfg.unfrozen_parameters:
        hp["unfrozen_parameters"] = ", ".join(cfg.unfrozen_parameters)
    if cfg.adapter is None:  # full fine-tuning: no LoRA settings to report
        return hp
    hp["lora_r"] = ad.get("r", cfg.lora_r)
    hp["lora_alpha"] = ad.get("lora_alpha", cfg.lora_alpha)
    hp["lora_dropout"] = ad.get("lora_dropout", cfg.lora_dropout)
    targets = (
        ad.get("target_modules")
        or cfg.lora_target_modules
        or ("all-linear" if cfg.lora_target_linear else None)
    )
    if targets:
        hp["lora_target_modules"] = _targets(targets, cfg.lora_target_linear)
    for key, name in (("use_dora", "dora"), ("use_rslora", "rslora")):
        if ad.get(key, getattr(cfg, f"peft_{key}")):
            hp[name] = True
    if ad.get("modules_to_save") or cfg.lora_modules_to_save:
        hp["lora_modules_to_save"] = ", ".join(ad.get("modules_to_save") or cfg.lora_modules_to_save)
    if cfg.quantized_4bit:
        extra = "".join(f", {k}={v}" for k, v in (cfg.bnb_config_kwargs or {}).items())
        hp["quantization"] = f"bitsandbytes 4-bit{extra}"
    elif cfg.load_in_8bit:
        hp["quantization"] = "bitsandbytes 8-bit"
    return hp


def _targets(targets: list[str] | str, all_linear: bool | None) -> str:
    """peft saves `all-linear` expanded to every module path: show the distinct module names."""
    if isinstance(targets, str):
        return targets
    names = ", ".join(sorted({t.rsplit(".", 1)[-1] for t in targets}))
    return f"all-linear ({names})" if all_linear else names


def results_section(run: Run) -> list[str]:
    out = []
    metrics = eval_metrics(run)
    if metrics:
        loss = metrics.get("loss")
        head = f"Final evaluation loss: **{fmt(loss)}**" if loss is not None else "Final evaluation:"
        pair_loss = methods.of(run.cfg).preference_data  # a pair loss has no perplexity
        if loss is not None and loss < 50 and not pair_loss:
            head += f" (perplexity {math.exp(loss):.4f})"
        out += [head, ""]
        others = {k: v for k, v in metrics.items() if k != "loss"}
        out += [f"- {k}: {fmt(v)}" for k, v in others.items()] + ([""] if others else [])
    summary = [
        (label, run.results[key]) for key, label in _SUMMARY.items() if run.results.get(key) is not None
    ]
    summary += [
        (k, v)
        for k, v in run.results.items()
        if "memory" in k and k not in _SUMMARY and isinstance(v, int | float)
    ]
    if summary:
        out += ["| training | |", "|---|---|", *(f"| {label} | {fmt(v)} |" for label, v in summary), ""]
    return ["## Results", "", *out] if out else []
