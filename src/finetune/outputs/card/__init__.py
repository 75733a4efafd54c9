"""The model card (output_dir/README.md), built only from what a run saved, so it can be rebuilt any time.

Training calls `write_card(output_dir)` as its last step and `finetune card OUTPUT_DIR` calls the same function,
so both give the same card, also for an interrupted run (the newest checkpoint's trainer_state.json is used).
The front matter comes from huggingface_hub's ModelCardData, so it is what the hub validates; the body is
written here, leaving out any section with nothing to say (no "More information needed" filler).
Reading: config.yml (resolved config), trainer_state.json, all/train/eval_results.json, adapter_config.json (with
`finetune eval`'s scores under its `generation` key).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from finetune import methods
from finetune.config import REDACTED, Config, redact
from finetune.files import atomic_write_text
from finetune.outputs import eval_results, lm_eval_results
from finetune.outputs.card import trl_training
from finetune.outputs.card.tracking import tracking_section
from finetune.outputs.card.training import (
    eval_metrics,
    fmt,
    hyperparameters,
    markdown_table,
    results_section,
    training_rows,
)
from finetune.outputs.card.usage import usage_snippet
from finetune.outputs.run_dir import Run, fact, hub_base, is_hub_id, read_run

# Tokens that may sit in a value under an innocent key: redacted anywhere in the card.
_SECRET_VALUE = re.compile(
    r"\b(hf_[A-Za-z0-9]{20,}|sk-[A-Za-z0-9_-]{20,}|ghp_[A-Za-z0-9]{20,}|wandb_v1_\w{20,})"
)
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
    if run.cfg.adapter is None:  # no adapter: the weights themselves trained
        return "full fine-tune"
    name = "QLoRA" if run.cfg.quantized_4bit else "LoRA"
    return f"{name} (DoRA)" if run.adapter.get("use_dora", run.cfg.peft_use_dora) else name


def training_kind(cfg: Config) -> str:
    return methods.of(cfg).tag


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
    full = cfg.adapter is None
    method_tag = "full-finetune" if full else "qlora" if cfg.quantized_4bit else "lora"
    tags = ["finetune", method_tag, training_kind(cfg)]
    if run.adapter.get("use_dora", cfg.peft_use_dora):
        tags.insert(2, "dora")
    if base_id:
        tags.append(f"base_model:{'finetune' if merged or full else 'adapter'}:{base_id}")
    if merged:
        tags.append("merged")
    method = methods.of(cfg)
    tags += [t for t in method.tags if t not in tags]  # the TRL methods': trl, dpo ...
    task = method.pipeline_tag
    results = []
    kind, name, split = _eval_data(cfg)
    for key, value in eval_metrics(run).items():
        results.append(
            EvalResult(
                task_type=task, dataset_type=kind, dataset_name=name, dataset_split=split,
                metric_type=key, metric_name=f"Validation {key.replace('_', ' ')}", metric_value=value,
            )
        )  # fmt: skip
    results += [EvalResult(**entry) for entry in eval_results.model_index(run)]  # `finetune eval` scores
    results += [EvalResult(**entry) for entry in lm_eval_results.model_index(run.results)]  # and lm-eval's
    hub_data = [p for p in _datasets(cfg) if is_hub_id(p)]
    return ModelCardData(
        base_model=base_id,
        library_name="transformers" if merged or full else "peft",
        pipeline_tag=task,
        license=cfg.license,
        tags=tags,
        datasets=hub_data or None,
        model_name=cfg.run_name if results else None,
        eval_results=results or None,
    )


def _link(name: str, kind: str = "") -> str:
    return f"[{name}](https://huggingface.co/{kind}{name})" if is_hub_id(name) else f"`{name}`"


def _data_phrase(cfg: Config) -> str:
    """The datasets as links, each with its `weight` when it is not 1 (a share of the rows, or repeats)."""
    if all(d.weight == 1 for d in cfg.datasets):
        return ", ".join(_link(p, "datasets/") for p in _datasets(cfg))
    return ", ".join(
        _link(d.path, "datasets/") + (f" (weight {d.weight:g})" if d.weight != 1 else "")
        for d in cfg.datasets
    )


def _base_phrase(run: Run) -> str:
    """The base as the card names it: a hub link, a local folder, or a GGUF file and its quantization."""
    cfg = run.cfg
    base = _link(cfg.base_source[0]) if hub_base(run) else f"`{cfg.base_source[0]}`"
    if not cfg.base_is_gguf:
        return base if hub_base(run) else f"{base} (a local model folder)"
    quant = fact(run, "base_gguf_quantization")
    where = (
        f"`{cfg.base_model}`" if cfg.base_model.lower().endswith(".gguf") else f"`{cfg.gguf_file}` of {base}"
    )
    return f"{where} (a GGUF file{f', {quant}' if quant else ''}, dequantized for training)"


def _description(run: Run, merged: Merged | None) -> str:
    cfg, state = run.cfg, run.state
    base = _base_phrase(run)
    data = _data_phrase(cfg)
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
    elif cfg.adapter is None:
        which = "the weights unfrozen_parameters matches" if cfg.unfrozen_parameters else "every weight"
        first = f"**{cfg.run_name}** is a full fine-tune of {base} ({which} trained, saved as a whole model)."
    else:
        first = f"**{cfg.run_name}** is a {_method(run)} adapter for {base}."
    if methods.of(cfg).online:  # GRPO: prompts and rewards, not answers
        first = trl_training.what_it_is(run, _method(run), base, merged)
        return (
            f"{first} It was trained with {tool} ({trl_training.how_trained(cfg)}) on the prompts of {data} "
            f"for {length}{done}, with sequences of up to {cfg.sequence_len} tokens."
        )
    if methods.of(cfg).preference_data:  # reward model, DPO ...: what it is and how it trained, its own way
        first = trl_training.what_it_is(run, _method(run), base, merged)
        return (
            f"{first} It was trained with {tool} ({trl_training.how_trained(cfg, fact(run, 'data'))}) on "
            f"{trl_training.what_data(cfg, fact(run, 'data'))} from "
            f"{data} for {length}{done}, with sequences of up to {cfg.sequence_len} tokens."
        )
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
    return _SECRET_VALUE.sub(REDACTED, value) if isinstance(value, str) else value


def _config_yaml(run: Run) -> str:
    raw = _redact_values(redact(yaml.safe_load(run.config_text) or {}))
    return yaml.safe_dump(raw, sort_keys=False, allow_unicode=True, width=120).rstrip()


def body(run: Run, merged: Merged | None = None) -> str:
    cfg = run.cfg
    title = f"{cfg.run_name} (merged)" if merged else cfg.run_name
    parts = [f"# {title}", "", _description(run, merged), ""]
    if merged and merged.max_logit_diff is not None:
        parts += [
            f"Check after saving: max |logit difference| vs base + adapter = {merged.max_logit_diff:.3g}.",
            "",
        ]
    generation = eval_results.card_section(run) + lm_eval_results.card_section(run.results)
    parts += results_section(run) or (["## Results", ""] if generation else [])
    parts += generation
    snippet = usage_snippet(run, merged)
    if snippet:
        parts += ["## Usage", "", "```python", snippet, "```", ""]
    parts += ["## Training procedure", "", "### Training hyperparameters", ""]
    trl_run = methods.of(cfg).by_trl
    hp = {**hyperparameters(run), **(trl_training.hyperparameters(cfg) if trl_run else {})}
    parts += [f"- {k}: {fmt(v)}" for k, v in hp.items()] + [""]
    log_keys = methods.of(cfg).log_keys
    table = markdown_table(training_rows(run.state.get("log_history", []), log_keys))
    if table:
        parts += ["### Training results", "", table, ""]
    if (run.output_dir / "reward.png").is_file():
        parts += ["![Mean reward during training](reward.png)", ""]
    elif (run.output_dir / "loss.png").is_file():
        parts += ["![Training and validation loss](loss.png)", ""]
    parts += tracking_section(run)
    parts += [
        "### Configuration",
        "",
        "<details><summary>config.yml (resolved, secrets redacted)</summary>",
        "",
    ]
    parts += ["```yaml", _config_yaml(run), "```", "", "</details>", ""]
    parts += _versions_section(run)
    parts += trl_training.citations(cfg) if trl_run else []
    return "\n".join(parts)


def _versions_section(run: Run) -> list[str]:
    """Library versions saved with the run; DeepSpeed, bitsandbytes and W&B only when the run used them."""
    cfg, versions = run.cfg, dict(run.cfg.finetune_versions or {})
    used = {
        "deepspeed": bool(cfg.deepspeed),
        "wandb": cfg.use_wandb,
        "bitsandbytes": cfg.quantized_4bit or cfg.load_in_8bit or "8bit" in cfg.optimizer,
        "trl": methods.of(cfg).by_trl,
    }
    names = [k for k in _VERSION_NAMES if k in versions] + [k for k in versions if k not in _VERSION_NAMES]
    lines = [f"- {_VERSION_NAMES.get(k, k)} {versions[k]}" for k in names if used.get(k, True)]
    return ["### Framework versions", "", *lines, ""] if lines else []


def render(output_dir: str | Path, merged: Merged | None = None) -> str:
    """The card's full text: front matter + body, secret-looking values redacted."""
    from huggingface_hub import ModelCard

    run = read_run(output_dir)
    text = f"---\n{metadata(run, merged).to_yaml()}\n---\n\n{body(run, merged)}"
    text = _SECRET_VALUE.sub(REDACTED, text)
    return str(ModelCard(text))  # parses the front matter: a card the hub would refuse fails here


def write_card(output_dir: str | Path, merged: Merged | None = None, dest: str | Path | None = None) -> Path:
    """Write README.md into `dest` (default: output_dir; merge passes the folder it is filling)."""
    path = Path(dest or output_dir) / "README.md"
    atomic_write_text(path, render(output_dir, merged))
    return path
