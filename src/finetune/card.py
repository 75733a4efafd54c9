"""The model card (output_dir/README.md), built only from what a run saved, so it can be rebuilt any time.

Training calls `write_card(output_dir)` as its last step and `finetune card OUTPUT_DIR` calls the same function,
so both give the same card, also for an interrupted run (the newest checkpoint's trainer_state.json is used).
The front matter comes from huggingface_hub's ModelCardData, so it is what the hub validates; the body is
written here, leaving out any section with nothing to say (no "More information needed" filler).
Reading: config.yml (resolved config), trainer_state.json, all/train/eval_results.json, adapter_config.json.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from finetune import config as config_module
from finetune.card_usage import usage_snippet
from finetune.config import Config
from finetune.files import atomic_write_text
from finetune.run_dir import Run, fact, hub_base, is_hub_id, read_run

_NOT_DISTRIBUTED = {"", "no", "none", "not_parallel", "not_distributed"}
_EVAL_NOISE = {"runtime", "samples_per_second", "steps_per_second", "epoch", "step"}
# Tokens that may sit in a value under an innocent key: redacted anywhere in the card.
_SECRET_VALUE = re.compile(
    r"\b(hf_[A-Za-z0-9]{20,}|sk-[A-Za-z0-9_-]{20,}|ghp_[A-Za-z0-9]{20,}|wandb_v1_\w{20,})"
)
# all_results.json keys shown under Results, with their labels (peak memory keys are added as they are).
_SUMMARY = {
    "train_loss": "training loss (mean over the run)",
    "final_train_loss": "training loss (last logged)",
    "global_step": "optimizer steps",
    "train_tokens": "tokens trained on (no padding)",
    "train_runtime": "runtime (s)",
    "train_samples_per_second": "samples/s",
    "train_tokens_per_second": "tokens/s",
}
_VERSION_NAMES = {
    "finetune": "finetune", "peft": "PEFT", "transformers": "Transformers", "torch": "PyTorch",
    "datasets": "Datasets", "tokenizers": "Tokenizers", "accelerate": "Accelerate", "trl": "TRL",
    "deepspeed": "DeepSpeed", "bitsandbytes": "bitsandbytes", "wandb": "wandb",
}  # fmt: skip


@dataclass(frozen=True)
class Merged:
    """What `finetune merge` adds to the card of a merged model."""

    out: Path
    dtype: str
    dequantize: bool
    max_logit_diff: float | None = None


# ---------------------------------------------------------------- what the card says


def _method(run: Run) -> str:
    name = "QLoRA" if run.cfg.quantized_4bit else "LoRA"
    return f"{name} (DoRA)" if run.adapter.get("use_dora", run.cfg.peft_use_dora) else name


def training_kind(cfg: Config) -> str:
    return getattr(cfg, "rl", None) or "sft"


def eval_metrics(run: Run) -> dict[str, float]:
    """Final evaluation, `eval_` prefix removed: eval_results.json / all_results.json, else the last eval log."""
    source = {k: v for k, v in run.results.items() if k.startswith("eval_")}
    if not source:
        source = next((e for e in reversed(run.state.get("log_history", [])) if "eval_loss" in e), {})
    out = {k.removeprefix("eval_"): v for k, v in source.items() if k.startswith("eval_")}
    return {k: v for k, v in out.items() if k not in _EVAL_NOISE and isinstance(v, int | float)}


def _column(key: str) -> str:
    return " ".join(part.capitalize() for part in key.removeprefix("eval_").split("_"))


def training_rows(log_history: list[dict]) -> list[dict]:
    """HF's training-results table: one row per evaluation, joined with the latest training loss logged at
    or before its step (the Trainer logs `loss` and `eval_loss` as separate entries). Without evaluations,
    one row per logged training loss."""
    train = sorted((e["step"], e["loss"]) for e in log_history if "loss" in e and "step" in e)
    evals = [e for e in log_history if "eval_loss" in e]
    if not evals:
        logs = [e for e in log_history if "loss" in e]
        return [{"Training Loss": e["loss"], "Epoch": e.get("epoch"), "Step": e.get("step")} for e in logs]
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
    world = fact(run, "world_size") or fact(run, "num_devices") or 1
    hp: dict = {"learning_rate": cfg.learning_rate, "train_batch_size": batch}
    hp["eval_batch_size"] = cfg.eval_batch_size or cfg.micro_batch_size
    hp["seed"] = cfg.seed
    distributed = fact(run, "distributed_type")
    if distributed is not None and str(distributed).lower() not in _NOT_DISTRIBUTED:
        hp["distributed_type"] = distributed
    if world > 1:
        hp["num_devices"] = world
    if cfg.gradient_accumulation_steps > 1:
        hp["gradient_accumulation_steps"] = cfg.gradient_accumulation_steps
    total = fact(run, "total_train_batch_size") or batch * world * cfg.gradient_accumulation_steps
    if total != batch:
        hp["total_train_batch_size"] = total
    if "adam" in cfg.optimizer:
        betas = f"({cfg.adam_beta1 or 0.9},{cfg.adam_beta2 or 0.999})"
        hp["optimizer"] = f"{cfg.optimizer} with betas={betas} and epsilon={cfg.adam_epsilon or 1e-08}"
    else:
        hp["optimizer"] = cfg.optimizer
    if cfg.weight_decay:
        hp["weight_decay"] = cfg.weight_decay
    hp["lr_scheduler_type"] = cfg.lr_scheduler
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


def _datasets(cfg: Config) -> list[str]:
    return list(dict.fromkeys(d.path for d in cfg.datasets))


def _eval_data(cfg: Config) -> tuple[str, str, str]:
    """(type, name, split) of the evaluation data for the model-index: a hub id, else the file's stem."""
    paths = [d.path for d in cfg.test_datasets] if cfg.test_datasets else _datasets(cfg)
    names = [p if is_hub_id(p) else Path(p).stem for p in paths]
    split = cfg.test_datasets[0].split if cfg.test_datasets else "validation"
    return names[0], ", ".join(names), split


def metadata(run: Run, merged: Merged | None = None):
    from huggingface_hub import EvalResult, ModelCardData

    cfg = run.cfg
    base_id = hub_base(run)
    tags = ["finetune", "qlora" if cfg.quantized_4bit else "lora", training_kind(cfg)]
    if run.adapter.get("use_dora", cfg.peft_use_dora):
        tags.insert(2, "dora")
    if base_id:
        tags.append(f"base_model:{'finetune' if merged else 'adapter'}:{base_id}")
    if merged:
        tags.append("merged")
    results = []
    kind, name, split = _eval_data(cfg)
    for key, value in eval_metrics(run).items():
        results.append(
            EvalResult(
                task_type="text-generation", dataset_type=kind, dataset_name=name, dataset_split=split,
                metric_type=key, metric_name=f"Validation {key.replace('_', ' ')}", metric_value=value,
            )
        )  # fmt: skip
    hub_data = [p for p in _datasets(cfg) if is_hub_id(p)]
    return ModelCardData(
        base_model=base_id,
        library_name="transformers" if merged else "peft",
        pipeline_tag="text-generation",
        license=cfg.license,
        tags=tags,
        datasets=hub_data or None,
        model_name=cfg.run_name if results else None,
        eval_results=results or None,
    )


def _link(name: str, kind: str = "") -> str:
    return f"[{name}](https://huggingface.co/{kind}{name})" if is_hub_id(name) else f"`{name}`"


def _description(run: Run, merged: Merged | None) -> str:
    cfg, state = run.cfg, run.state
    base = _link(cfg.base_model) if hub_base(run) else f"`{cfg.base_model}` (a local model folder)"
    data = ", ".join(_link(p, "datasets/") for p in _datasets(cfg))
    steps = state.get("global_step")
    length = (
        f"{cfg.max_steps} steps"
        if cfg.max_steps and cfg.max_steps > 0
        else f"{cfg.num_epochs:g} epoch{'s' if cfg.num_epochs != 1 else ''}"
    )
    done = f" ({steps} optimizer steps)" if steps else ""
    loss = "all tokens" if cfg.train_on_inputs else "the answer tokens only"
    version = (cfg.finetune_versions or {}).get("finetune")
    tool = f"finetune {version}" if version else "finetune"
    if merged:
        how = "the NF4-dequantized base the adapter was trained against" if merged.dequantize else "the base"
        first = (
            f"**{cfg.run_name}** is {base} with a {_method(run)} adapter merged into {how}, "
            f"saved in {merged.dtype}."
        )
    else:
        first = f"**{cfg.run_name}** is a {_method(run)} adapter for {base}."
    return (
        f"{first} It was trained with {tool} ({training_kind(cfg)}, loss on {loss}) on {data} for {length}{done}, "
        f"with sequences of up to {cfg.sequence_len} tokens."
    )


def _redact_values(value):
    """Secret-looking values (hf_..., sk-...) under any key; config.redact catches secret-looking keys."""
    if isinstance(value, dict):
        return {k: _redact_values(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_values(v) for v in value]
    return _SECRET_VALUE.sub(config_module.REDACTED, value) if isinstance(value, str) else value


def _config_yaml(run: Run) -> str:
    raw = _redact_values(config_module.redact(yaml.safe_load(run.config_text) or {}))
    return yaml.safe_dump(raw, sort_keys=False, allow_unicode=True, width=120).rstrip()


def _results_section(run: Run) -> list[str]:
    out = []
    metrics = eval_metrics(run)
    if metrics:
        loss = metrics.get("loss")
        head = f"Final evaluation loss: **{fmt(loss)}**" if loss is not None else "Final evaluation:"
        if loss is not None and loss < 50:
            head += f" (perplexity {math.exp(loss):.4f})"
        out += [head, ""]
        others = {k: v for k, v in metrics.items() if k != "loss"}
        out += [f"- {k}: {fmt(v)}" for k, v in others.items()] + ([""] if others else [])
    summary = [
        (label, run.results[key]) for key, label in _SUMMARY.items() if run.results.get(key) is not None
    ]
    summary += [(k, v) for k, v in run.results.items() if "memory" in k and isinstance(v, int | float)]
    if summary:
        out += ["| training | |", "|---|---|", *(f"| {label} | {fmt(v)} |" for label, v in summary), ""]
    return ["## Results", "", *out] if out else []


def body(run: Run, merged: Merged | None = None) -> str:
    cfg = run.cfg
    title = f"{cfg.run_name} (merged)" if merged else cfg.run_name
    parts = [f"# {title}", "", _description(run, merged), ""]
    if merged and merged.max_logit_diff is not None:
        parts += [
            f"Check after saving: max |logit difference| vs base + adapter = {merged.max_logit_diff:.3g}.",
            "",
        ]
    parts += _results_section(run)
    snippet = usage_snippet(run, merged)
    if snippet:
        parts += ["## Usage", "", "```python", snippet, "```", ""]
    parts += ["## Training procedure", "", "### Training hyperparameters", ""]
    parts += [f"- {k}: {fmt(v)}" for k, v in hyperparameters(run).items()] + [""]
    table = markdown_table(training_rows(run.state.get("log_history", [])))
    if table:
        parts += ["### Training results", "", table, ""]
    if (run.output_dir / "loss.png").is_file():
        parts += ["![Training and validation loss](loss.png)", ""]
    parts += [
        "### Configuration",
        "",
        "<details><summary>config.yml (resolved, secrets redacted)</summary>",
        "",
    ]
    parts += ["```yaml", _config_yaml(run), "```", "", "</details>", ""]
    parts += _versions_section(run)
    return "\n".join(parts)


def _versions_section(run: Run) -> list[str]:
    """Library versions saved with the run; DeepSpeed, bitsandbytes and W&B only when the run used them."""
    cfg, versions = run.cfg, dict(run.cfg.finetune_versions or {})
    used = {
        "deepspeed": bool(cfg.deepspeed),
        "wandb": cfg.use_wandb,
        "bitsandbytes": cfg.quantized_4bit or cfg.load_in_8bit or "8bit" in cfg.optimizer,
    }
    names = [k for k in _VERSION_NAMES if k in versions] + [k for k in versions if k not in _VERSION_NAMES]
    lines = [f"- {_VERSION_NAMES.get(k, k)} {versions[k]}" for k in names if used.get(k, True)]
    return ["### Framework versions", "", *lines, ""] if lines else []


def render(output_dir: str | Path, merged: Merged | None = None) -> str:
    """The card's full text: front matter + body, secret-looking values redacted."""
    from huggingface_hub import ModelCard

    run = read_run(output_dir)
    text = f"---\n{metadata(run, merged).to_yaml()}\n---\n\n{body(run, merged)}"
    text = _SECRET_VALUE.sub(config_module.REDACTED, text)
    return str(ModelCard(text))  # parses the front matter: a card the hub would refuse fails here


def write_card(output_dir: str | Path, merged: Merged | None = None, dest: str | Path | None = None) -> Path:
    """Write README.md into `dest` (default: output_dir; merge passes the folder it is filling)."""
    path = Path(dest or output_dir) / "README.md"
    atomic_write_text(path, render(output_dir, merged))
    return path
