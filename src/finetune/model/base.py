"""The base model: its config (with overrides), quantization (4-bit NF4, 8-bit, pre-quantized checkpoints),
loading (hub, local folder, GGUF file) and the CPU 4-bit workaround; used by training, merge, generate, eval."""

from __future__ import annotations

import copy
import os
from contextlib import nullcontext
from pathlib import Path

from finetune import hub, methods
from finetune.config import Config
from finetune.config.deepspeed import zero_stage
from finetune.config.fsdp import requested as fsdp_requested
from finetune.errors import UserError
from finetune.model import gguf_base
from finetune.model.compute import Precision, attn_implementation


def _prequantized(model_config) -> dict | None:
    """A checkpoint saved already quantized (e.g. unsloth/...-bnb-4bit) carries quantization_config."""
    q = getattr(model_config, "quantization_config", None)
    if q is None:
        return None
    return q if isinstance(q, dict) else q.to_dict()


def quantization_config(cfg: Config, prec: Precision):
    """NF4 with double quantization for 4-bit (the QLoRA paper's recipe) unless the bnb_4bit_* keys say otherwise,
    LLM.int8 for 8-bit, else None."""
    from transformers import BitsAndBytesConfig

    extra = dict(cfg.bnb_config_kwargs or {})
    if cfg.quantized_4bit:
        import torch

        storage = quant_storage(cfg, prec.dtype)  # ZeRO-3 shards 4-bit weights stored in the training dtype
        double_quant = cfg.bnb_4bit_use_double_quant
        return BitsAndBytesConfig(
            **{
                "load_in_4bit": True,
                "bnb_4bit_quant_type": cfg.bnb_4bit_quant_type or "nf4",
                "bnb_4bit_use_double_quant": True if double_quant is None else double_quant,
                "bnb_4bit_compute_dtype": getattr(torch, cfg.bnb_4bit_compute_dtype or prec.dtype),
                "bnb_4bit_quant_storage": getattr(torch, storage),
                **extra,
            }
        )
    if cfg.load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True, **extra)
    return None


def _device_map(cfg: Config):
    """One whole copy per process on its own GPU; None on CPU and under ZeRO-3 (DeepSpeed places weights)."""
    import torch

    if not torch.cuda.is_available():
        return None
    if zero_stage(cfg.deepspeed) == 3:
        return None
    return {"": int(os.environ.get("LOCAL_RANK", torch.cuda.current_device()))}


def load_model_config(cfg: Config):
    """The base's model config (cheap, no weights) with overrides_of_model_config applied.

    train, merge, generate and eval all read it here, so the model they build is the same one. An override of
    a setting the config does not have would change nothing (a typo, or another architecture's key): refused.
    """
    source = cfg.base_model_config or cfg.base_source[0]
    try:
        model_config = _auto_config(cfg, source)
    except (OSError, ValueError) as exc:
        raise UserError(
            f"base_model: cannot load a model config from {source!r} ({str(exc).splitlines()[0]})"
        ) from None
    for key, value in (cfg.overrides_of_model_config or {}).items():
        if not hasattr(model_config, key):
            raise UserError(
                f"overrides_of_model_config.{key}: not a setting of {source}'s config "
                f"({type(model_config).__name__}), so it would change nothing"
            )
        setattr(model_config, key, value)
    return model_config


# A local GGUF file's model config, by (file, mtime, size, trust_remote_code): transformers parses the whole file
# for it (a 135M model's 49k-token vocabulary: seconds), and export reads it three times, merge twice.
_GGUF_CONFIGS: dict[tuple, object] = {}


def _auto_config(cfg: Config, source: str):
    """AutoConfig.from_pretrained for the base; a local GGUF file's is parsed once per process (a copy each call,
    so overrides applied by one caller do not leak into the next)."""
    from transformers import AutoConfig

    gguf = cfg.gguf_kwargs(source)
    path = Path(source).expanduser() / gguf["gguf_file"] if gguf else None
    key = None
    if path is not None and path.is_file():
        stat = path.stat()
        key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size, cfg.trust_remote_code)
        if key in _GGUF_CONFIGS:
            return copy.deepcopy(_GGUF_CONFIGS[key])
    model_config = AutoConfig.from_pretrained(
        source,
        revision=cfg.revision_of_model,
        trust_remote_code=cfg.trust_remote_code,
        **gguf,
        **hub.loader_kwargs(),
    )
    if key is not None:
        _GGUF_CONFIGS[key] = copy.deepcopy(model_config)
    return model_config


def load_base(cfg: Config, prec: Precision, notes: list[str], attn: str | None = None):
    """from_pretrained with the run's quantization, dtype, attention kernel, revision and remote-code choice.

    A reward model is the same base with a one-output sequence-classification head (`score`) instead of the LM
    head: it is newly initialised here, trained in full and saved with the adapter (adapter.lora_config).
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    common = {"revision": cfg.revision_of_model, "trust_remote_code": cfg.trust_remote_code}
    model_config = load_model_config(cfg)
    pre = _prequantized(model_config)
    if pre is not None:
        quant = None  # loaded as it was saved; passing our own config would conflict with it
        notes.append(
            f"base_model: pre-quantized checkpoint ({pre.get('quant_method', '?')}), loaded as it is"
        )
    else:
        quant = quantization_config(cfg, prec)
    if not cfg.quantized_4bit:  # FinLoRA's 8-bit configs carry them; axolotl ignores them there too
        for key in ("bnb_4bit_quant_type", "bnb_4bit_use_double_quant", "bnb_4bit_compute_dtype"):
            if getattr(cfg, key):
                notes.append(f"{key}: no effect without load_in_4bit")
    kwargs = {
        "config": model_config,
        "dtype": prec.torch_dtype,
        "attn_implementation": attn or attn_implementation(cfg, notes),
        "device_map": _device_map(cfg),
        **hub.loader_kwargs(),
        **common,
    }
    if quant is not None:
        kwargs["quantization_config"] = quant
    auto_class, quiet = AutoModelForCausalLM, nullcontext()
    if methods.of(cfg).score_head:
        auto_class, quiet = AutoModelForSequenceClassification, new_head_is_expected()
        model_config.num_labels = 1  # one scalar reward per sequence
    # a GGUF base is dequantized on the CPU, then rebuilt as an ordinary model where it will train
    device_map = kwargs.pop("device_map") if cfg.base_is_gguf else kwargs["device_map"]
    folder, gguf_file = cfg.base_source
    try:
        with quiet:
            model = auto_class.from_pretrained(folder, **kwargs, **gguf_base.dequantize_kwargs(cfg))
    except OSError as exc:
        raise UserError(f"base_model: cannot load {cfg.base_model!r} ({str(exc).splitlines()[0]})") from None
    if gguf_file:
        dtype = kwargs["dtype"]
        model = gguf_base.plain_model(
            model, model_config, dtype, cfg.base_model, device_map, kwargs["attn_implementation"]
        )
        notes.append(f"base_model: {gguf_file} dequantized from GGUF to {str(dtype).removeprefix('torch.')}")
    return model


def new_head_is_expected():
    """The LM checkpoint has no `score` weights and an unused lm_head: that is the point, not a warning
    (TRL's own context manager for it; a no-op where TRL lacks it)."""
    try:
        from trl.trainer.reward_trainer import suppress_seqcls_warning
    except ImportError:
        return nullcontext()
    return suppress_seqcls_warning()


def quantization_of(model) -> str:
    """4-bit / 8-bit / 16-bit / 32-bit, read from the loaded modules (a pre-quantized base included)."""
    import bitsandbytes as bnb

    kinds = {type(m) for m in model.modules()}
    if any(issubclass(k, bnb.nn.Linear4bit) for k in kinds):
        return "4-bit"
    if any(issubclass(k, bnb.nn.Linear8bitLt) for k in kinds):
        return "8-bit"
    dtype = next(model.parameters()).dtype
    return "32-bit" if dtype.itemsize == 4 else "16-bit"


def disable_cpu_bf16_repack(model) -> int:
    """Work around bitsandbytes' CPU 4-bit trap; returns the number of layers changed.

    On CPUs with AVX512-BF16, a forward in eval mode repacks the 4-bit weights for a faster inference
    kernel that has no autograd; later training forwards then drop the gradients through those layers
    silently (FACTS.md; bitsandbytes 0.50 `Linear4bit.forward`). Turning the repack off keeps training
    exact after evaluation, at the cost of slower CPU evaluation.
    """
    import bitsandbytes as bnb

    changed = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit) and getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            changed += 1
    return changed


def quant_storage(cfg: Config, dtype: str) -> str:
    """Storage dtype of 4-bit weights: the config's, else the training dtype under ZeRO-3 or FSDP, else uint8.

    ZeRO-3 flattens and shards parameters by dtype; 4-bit weights packed into uint8 next to bf16 norms and
    LoRA weights break that on GPUs (the failure peers report), while packed into the training dtype they
    shard like every other tensor (the recipe of peft's and HF's QLoRA + ZeRO-3 guides, and of Answer.AI's
    FSDP-QLoRA, which axolotl follows). Same NF4 values.
    """
    if cfg.bnb_4bit_quant_storage:
        return cfg.bnb_4bit_quant_storage
    return dtype if zero_stage(cfg.deepspeed) == 3 or fsdp_requested(cfg) else "uint8"
