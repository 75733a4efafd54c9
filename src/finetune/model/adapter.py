"""The adapter half of the model stage: a LoRA (or DoRA / rsLoRA) configuration from the config's keys,
k-bit preparation and gradient checkpointing, then peft's wrap — fresh and seeded, or from lora_model_dir.
"""

from __future__ import annotations

from finetune import methods, quiet
from finetune.config import Config
from finetune.errors import UserError
from finetune.model import speedups

# Attention projections: the default targets when neither lora_target_modules nor lora_target_linear is set.
DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def lora_config(cfg: Config, extra_modules_to_save: list[str] = (), model=None):
    """The LoraConfig of a fresh adapter. `model` is needed only with peft_layers_to_transform (see there)."""
    from peft import LoraConfig

    if cfg.lora_target_linear:
        targets: list[str] | str = "all-linear"
    elif cfg.lora_target_modules:
        targets = cfg.lora_target_modules
    else:
        targets = DEFAULT_TARGETS
    layers = cfg.peft_layers_to_transform
    if layers is not None:
        check_layers(cfg, model)
        if targets == "all-linear":  # peft takes layers_to_transform only with a list of module names
            targets = linear_module_names(model)
    head = (
        ["score"] if methods.of(cfg).score_head else []
    )  # a new reward head: trained in full, saved with the adapter
    to_save = list(dict.fromkeys([*(cfg.lora_modules_to_save or []), *extra_modules_to_save, *head])) or None
    return LoraConfig(
        task_type="SEQ_CLS" if methods.of(cfg).score_head else "CAUSAL_LM",
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=targets,
        modules_to_save=to_save,
        fan_in_fan_out=cfg.lora_fan_in_fan_out,
        use_dora=cfg.peft_use_dora,
        use_rslora=cfg.peft_use_rslora,
        init_lora_weights=True if cfg.peft_init_lora_weights is None else cfg.peft_init_lora_weights,
        layers_to_transform=layers,
        layers_pattern=cfg.peft_layers_pattern,
        bias="none",
    )


def linear_module_names(model) -> list[str]:
    """What peft's `all-linear` adapts, as module names: every linear layer except the output head."""
    import bitsandbytes as bnb
    import torch

    linear = (torch.nn.Linear, bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)
    head = model.get_output_embeddings()
    names = {
        n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, linear) and m is not head
    }
    return sorted(names - {"lm_head", "score"})


def check_layers(cfg: Config, model) -> None:
    """A layer index past the model's last would silently adapt nothing there: refused in one line."""
    count = getattr(model.config.get_text_config(), "num_hidden_layers", None)
    missing = [i for i in cfg.peft_layers_to_transform if count is not None and i >= count]
    if missing:
        raise UserError(
            f"peft_layers_to_transform: layer {missing[0]} does not exist ({cfg.base_model} has {count} "
            f"layers, 0 to {count - 1})"
        )


def gradient_checkpointing_kwargs(cfg: Config) -> dict:
    # Non-reentrant checkpointing works with frozen inputs (LoRA) without extra hooks and is torch's advice.
    return {"use_reentrant": False, **(cfg.gradient_checkpointing_kwargs or {})}


def wrap(cfg: Config, model, kbit: bool, extra_modules_to_save: list[str], notes: list[str]):
    """k-bit preparation, gradient checkpointing, then a fresh LoRA (seeded) or the one in lora_model_dir."""
    from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training
    from transformers import set_seed

    quiet.checkpointing_deprecation()  # peft 0.21 reads `is_gradient_checkpointing`, deprecated in transformers 5
    checkpointing = bool(cfg.gradient_checkpointing)  # "offload" too: see speedups.offload_activations
    if cfg.gradient_checkpointing == "offload" and not speedups.offload_applies(cfg):
        notes.append(
            "gradient_checkpointing: offload runs as plain checkpointing on CPU (no device memory to save)"
        )
    gc_kwargs = gradient_checkpointing_kwargs(cfg)
    if kbit:
        # Casts norms/embeddings to fp32 and makes inputs require grad, so checkpointed k-bit layers backprop.
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=checkpointing, gradient_checkpointing_kwargs=gc_kwargs
        )
    elif checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gc_kwargs)
        model.enable_input_require_grads()
    if checkpointing:
        model.config.use_cache = False  # the cache is useless in training and conflicts with checkpointing

    set_seed(cfg.seed)  # before the adapter is built: LoRA's init draws from the RNG (FACTS.md)
    if cfg.lora_model_dir:
        model = PeftModel.from_pretrained(model, cfg.lora_model_dir, is_trainable=True)
        notes.append(
            f"adapter: continuing from {cfg.lora_model_dir} (its r/alpha/targets apply, not this config's)"
        )
    else:
        model = get_peft_model(model, lora_config(cfg, extra_modules_to_save, model))
    return model
