"""Full fine-tuning and `unfrozen_parameters` in the model stage: which weights train, and how the weights that
train beside an adapter are saved and read back.

With no adapter every weight trains, or with unfrozen_parameters only the matching ones (axolotl's reading of
the patterns: config/full_checks.py). With an adapter the matching base weights train beside it; peft saves only
the adapter, so they are written to UNFROZEN_FILE next to adapter_model.safetensors — a safetensors file keyed
by the base model's own parameter names (`model.layers.0.mlp.down_proj.weight`), as `base.state_dict()` names
them — and `apply_to_base` loads them into the base before the adapter is attached (generate, eval, merge,
export). Merging then folds the adapter into the trained weights, as training computed W' + BA.
"""

from __future__ import annotations

from pathlib import Path

from finetune.config import Config
from finetune.config.full_checks import unfrozen_pattern
from finetune.errors import UserError
from finetune.model.base import quantization_of

UNFROZEN_FILE = "unfrozen_parameters.safetensors"
_PEFT_PREFIX = "base_model.model."
_PEFT_OWN = ("lora_", ".modules_to_save.", ".original_module.", "trainable_tokens_")


def base_name(name: str, peft: bool) -> str | None:
    """A parameter's name in the base model (peft's wrapper and `.base_layer` removed); None for the adapter's
    own weights (LoRA matrices, modules_to_save copies), which peft trains and saves itself."""
    if not peft:
        return name
    if any(part in name for part in _PEFT_OWN):
        return None
    return name.removeprefix(_PEFT_PREFIX).replace(".base_layer.", ".")


def prepare_full(cfg: Config, model, gc_kwargs: dict, notes: list[str]):
    """The base for full fine-tuning: a 16/32-bit model (nothing to update in 4/8-bit codes), gradient
    checkpointing as asked, every weight trainable unless unfrozen_parameters narrows it."""
    quantization = quantization_of(model)
    if quantization in ("4-bit", "8-bit"):
        raise UserError(
            f"base_model: {cfg.base_model} is saved {quantization}-quantized, and full fine-tuning (no adapter) "
            "cannot update quantized weights: set adapter: qlora, or use a 16/32-bit base"
        )
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gc_kwargs)
        model.enable_input_require_grads()  # frozen embeddings (unfrozen_parameters) still pass gradients
        model.config.use_cache = False
    for param in model.parameters():
        param.requires_grad_(True)
    if cfg.unfrozen_parameters:
        unfreeze(cfg, model, peft=False, notes=notes)
    return model


def unfreeze(cfg: Config, model, peft: bool, notes: list[str]) -> list[str]:
    """Train the parameters unfrozen_parameters matches (with no adapter: only those). Returns their base names.

    A pattern that matches no parameter, or one that matches a 4/8-bit weight (integer codes, no gradient), is
    refused in one line each. Tied weights (an lm_head sharing the embedding) answer to both names."""
    patterns = [(text, unfrozen_pattern(text)) for text in cfg.unfrozen_parameters]
    hits = {text: 0 for text, _ in patterns}
    quantized, chosen, names = [], [], []
    for name, param in model.named_parameters(remove_duplicate=False):
        base = base_name(name, peft)
        if base is None:
            continue
        names.append(base)
        matched = [text for text, rx in patterns if rx.match(base)]
        for text in matched:
            hits[text] += 1
        if matched and not param.dtype.is_floating_point:
            quantized.append((matched[0], base))
        elif matched:
            chosen.append((base, param))
        elif not peft:
            param.requires_grad_(False)
    problems = [
        f"unfrozen_parameters: {text!r} matches no parameter of {cfg.base_model} (names look like "
        f"{', '.join(names[:2])}; a '.' is a literal dot, matched from the name's start)"
        for text, count in hits.items()
        if not count
    ]
    if quantized:
        text, base = quantized[0]
        problems.append(
            f"unfrozen_parameters: {text!r} matches {len(quantized)} quantized weight(s) ({base} ...), which "
            "cannot train: narrow the pattern to 16/32-bit weights (norms, embeddings, lm_head) or use adapter: lora"
        )
    if problems:
        raise UserError(problems)
    for _, param in chosen:
        param.requires_grad_(True)
    unique = list(dict.fromkeys(base for base, _ in chosen))
    where = "beside the adapter, saved in " + UNFROZEN_FILE if peft else "the rest of the model is frozen"
    notes.append(f"unfrozen_parameters: {len(unique)} parameter tensor(s) train ({where})")
    return unique


def unfrozen_state(model) -> dict:
    """The trainable base weights of a peft model, by base name (empty without unfrozen_parameters)."""
    return {
        base: param.detach().cpu().clone().contiguous()
        for name, param in model.named_parameters(remove_duplicate=False)
        if param.requires_grad and (base := base_name(name, peft=True)) is not None
    }


def save(model, folder: str | Path) -> None:
    """UNFROZEN_FILE beside the adapter, when weights train beside it (atomically: a checkpoint is resumable
    only when whole)."""
    from safetensors.torch import save_file

    state = unfrozen_state(model)
    if not state:
        return
    path = Path(folder) / UNFROZEN_FILE
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(state, str(tmp), metadata={"format": "pt", "names": "base model parameter names"})
    tmp.replace(path)


def apply_to_base(base, folder: str | Path) -> int:
    """Load a run's UNFROZEN_FILE (if any) into the base, before its adapter is attached; returns the count."""
    path = Path(folder) / UNFROZEN_FILE
    if not path.is_file():
        return 0
    from safetensors.torch import load_file

    state = load_file(str(path))
    params = dict(base.named_parameters(remove_duplicate=False))
    missing = [k for k in state if k not in params]
    if missing:
        raise UserError(f"{path}: {missing[0]} is not a parameter of this base model")
    import torch

    with torch.no_grad():
        for key, value in state.items():
            params[key].copy_(value.to(params[key].dtype))
    return len(state)


def load_into_peft(model, folder: str | Path) -> int:
    """Resuming: the checkpoint's UNFROZEN_FILE back into the peft model's trained base weights."""
    path = Path(folder) / UNFROZEN_FILE
    if not path.is_file():
        return 0
    import torch
    from safetensors.torch import load_file

    state = load_file(str(path))
    by_base = {
        base: param
        for name, param in model.named_parameters(remove_duplicate=False)
        if (base := base_name(name, peft=True)) is not None
    }
    with torch.no_grad():
        for key, value in state.items():
            by_base[key].copy_(value.to(by_base[key].dtype))
    return len(state)
