"""The model stage: the base (4-bit, 8-bit or 16/32-bit) wrapped in a LoRA adapter, ready for the Trainer.

`load(cfg, tokenizer)` is the whole stage; the helpers below it are its steps, top to bottom:
precision (compute.py) -> quantization and base weights (base.py) -> vocabulary -> adapter (adapter.py)
-> CPU 4-bit fix.
Each step that changes what the user asked for (a kernel that is not available, embeddings that must be
trained) leaves a line in `LoadedModel.notes`, which `train` prints, so nothing is replaced silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from finetune.config import Config
from finetune.model import adapter, unfrozen
from finetune.model.base import (  # noqa: F401 - the stage's public names
    disable_cpu_bf16_repack,
    load_base,
    load_model_config,
    new_head_is_expected,
    quant_storage,
    quantization_config,
    quantization_of,
)
from finetune.model.compute import Precision, attn_implementation, cpu_threads, precision  # noqa: F401


@dataclass
class LoadedModel:
    model: Any  # peft.PeftModel, or the base itself for full fine-tuning (no adapter)
    quantization: str  # "4-bit", "8-bit" or "16-bit"/"32-bit"
    trainable_params: int
    total_params: int
    attn_implementation: str  # what the base was loaded with (sdpa when flash attention cannot run)
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- precision and kernels


# ---------------------------------------------------------------- quantization


# ---------------------------------------------------------------- the base model


def fit_vocabulary(model, tokenizer, new_tokens: int, notes: list[str]) -> list[str]:
    """Grow the embeddings to the tokenizer; rows for new tokens are untrained, so train them in full.

    Returns the module names to add to modules_to_save (empty when no token is new).
    """
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        model.resize_token_embeddings(len(tokenizer))
    if tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
        if getattr(model, "generation_config", None) is not None:  # a reward model does not generate
            model.generation_config.pad_token_id = tokenizer.pad_token_id
    if new_tokens <= 0:
        return []
    names = {id(m): n.rsplit(".", 1)[-1] for n, m in model.named_modules()}
    modules = [names[id(model.get_input_embeddings())]]
    out = model.get_output_embeddings()
    if out is not None and id(out) in names and names[id(out)] not in modules:
        modules.append(names[id(out)])
    notes.append(
        f"tokens: {new_tokens} new token(s) added to the vocabulary; {' and '.join(modules)} are trained in full "
        "and saved with the adapter (modules_to_save) so the new rows learn something"
    )
    return modules


# ---------------------------------------------------------------- the stage


def load(cfg: Config, tokenizer, new_tokens: int) -> LoadedModel:
    """Base model + LoRA adapter (no adapter: the base itself, trained in full), in the precision and quantization
    the config asks for. `new_tokens`: how many tokens the config added to the base tokenizer
    (data.tokenizer.count_new_tokens); their rows are trained."""
    notes: list[str] = []
    prec = precision(cfg)
    attn = attn_implementation(cfg, notes)
    model = load_base(cfg, prec, notes, attn)
    cpu_threads(model, notes)
    quantization = quantization_of(model)
    kbit = quantization in ("4-bit", "8-bit")
    if cfg.adapter is None:  # full fine-tuning: every weight (or unfrozen_parameters) trains
        fit_vocabulary(model, tokenizer, new_tokens, [])
        model = unfrozen.prepare_full(cfg, model, adapter.gradient_checkpointing_kwargs(cfg), notes)
        params = list(model.parameters())
        trainable = sum(p.numel() for p in params if p.requires_grad)
        total = sum(p.numel() for p in params)
        return LoadedModel(model, quantization, trainable, total, attn, notes)
    trained_embeddings = fit_vocabulary(model, tokenizer, new_tokens, notes)
    model = adapter.wrap(cfg, model, kbit, trained_embeddings, notes)
    if cfg.unfrozen_parameters:  # base weights that train beside the adapter
        unfrozen.unfreeze(cfg, model, peft=True, notes=notes)
    disable_cpu_bf16_repack(model)
    trainable, total = model.get_nb_trainable_parameters()  # a 4-bit weight counts in full
    return LoadedModel(
        model=model,
        quantization=quantization,
        trainable_params=trainable,
        total_params=total,
        attn_implementation=attn,
        notes=notes,
    )
