"""The model stage: the base (4-bit, 8-bit or 16/32-bit) wrapped in a LoRA adapter, ready for the Trainer.

`load(cfg, tokenizer)` is the whole stage; the helpers below it are its steps, top to bottom:
precision -> quantization -> base weights -> vocabulary -> adapter (adapter.py) -> CPU 4-bit fix.
Each step that changes what the user asked for (a kernel that is not available, embeddings that must be
trained) leaves a line in `LoadedModel.notes`, which `train` prints, so nothing is replaced silently.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from finetune.config import Config
from finetune.config.deepspeed import zero_stage
from finetune.errors import UserError
from finetune.model import adapter

SMALL_HIDDEN = 512  # below this hidden size, one CPU thread trains faster than several (see cpu_threads)


@dataclass(frozen=True)
class Precision:
    """What the run computes in: mixed-precision flags for the Trainer and the dtype the base is held in."""

    bf16: bool
    fp16: bool
    tf32: bool | None
    dtype: str  # "bfloat16" | "float16" | "float32": 4-bit compute dtype and the dtype of a 16/32-bit base

    @property
    def torch_dtype(self):
        import torch

        return getattr(torch, self.dtype)


@dataclass
class LoadedModel:
    model: Any  # peft.PeftModel
    quantization: str  # "4-bit", "8-bit" or "16-bit"/"32-bit"
    trainable_params: int
    total_params: int
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- precision and kernels


def _accelerator_bf16() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def precision(cfg: Config) -> Precision:
    """`bf16: auto` means bf16 where a GPU supports it; on CPU the run stays in fp32 (exact, and not slower).

    axolotl's `bfloat16` / `float16` hold the base in that dtype without mixed precision (config_checks keeps
    them from contradicting bf16/fp16).
    """
    import torch

    on_gpu = torch.cuda.is_available()
    if cfg.bf16 is True:
        bf16 = True
    elif cfg.bf16 == "auto":
        bf16 = _accelerator_bf16() and not (cfg.fp16 or cfg.float16)
    else:
        bf16 = False
    fp16 = bool(cfg.fp16) and not bf16
    if fp16 and not on_gpu:
        raise UserError("fp16: fp16 mixed precision needs a GPU (set fp16: false, or bf16: auto)")
    if bf16 or cfg.bfloat16:
        dtype = "bfloat16"
    else:
        dtype = "float16" if fp16 or cfg.float16 else "float32"
    # TF32 is an Ampere+ GPU feature; the Trainer raises on any other device, so it is dropped there.
    tf32 = cfg.tf32 if on_gpu and torch.cuda.get_device_capability()[0] >= 8 else None
    return Precision(bf16=bf16, fp16=fp16, tf32=tf32, dtype=dtype)


def attn_implementation(cfg: Config, notes: list[str]) -> str:
    """sdpa by default; flash_attention_2 only where it can run (CUDA + the flash_attn package)."""
    import importlib.util

    import torch

    wanted = cfg.requested_attention
    if cfg.xformers_attention and not cfg.attn_implementation:
        notes.append(
            "xformers_attention: transformers has no xformers kernel; sdpa computes the same attention "
            "(with its memory-efficient kernel on a GPU)"
        )
    if wanted.startswith("flash_attention") and not (
        torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None
    ):
        notes.append(f"attention: {wanted} needs a CUDA GPU and the flash_attn package; using sdpa instead")
        return "sdpa"
    return wanted


# ---------------------------------------------------------------- quantization


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


# ---------------------------------------------------------------- the base model


def load_model_config(cfg: Config):
    """The base's model config (cheap, no weights) with overrides_of_model_config applied.

    train, merge, generate and eval all read it here, so the model they build is the same one. An override of
    a setting the config does not have would change nothing (a typo, or another architecture's key): refused.
    """
    from transformers import AutoConfig

    source = cfg.base_model_config or cfg.base_source[0]
    try:
        model_config = AutoConfig.from_pretrained(
            source,
            revision=cfg.revision_of_model,
            trust_remote_code=cfg.trust_remote_code,
            **cfg.gguf_kwargs(source),
        )
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


def load_base(cfg: Config, prec: Precision, notes: list[str]):
    """from_pretrained with the run's quantization, dtype, attention kernel, revision and remote-code choice.

    A reward model is the same base with a one-output sequence-classification head (`score`) instead of the LM
    head: it is newly initialised here, trained in full and saved with the adapter (adapter.lora_config).
    """
    from contextlib import nullcontext

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
        "attn_implementation": attn_implementation(cfg, notes),
        "device_map": _device_map(cfg),
        **common,
    }
    if quant is not None:
        kwargs["quantization_config"] = quant
    auto_class, quiet = AutoModelForCausalLM, nullcontext()
    if cfg.reward_model:
        auto_class, quiet = AutoModelForSequenceClassification, _new_head_is_expected()
        model_config.num_labels = 1  # one scalar reward per sequence
    if cfg.base_is_gguf:
        return _load_gguf_base(cfg, auto_class, kwargs, quiet, notes)
    try:
        with quiet:
            model = auto_class.from_pretrained(cfg.base_model, **kwargs)
    except OSError as exc:
        raise UserError(f"base_model: cannot load {cfg.base_model!r} ({str(exc).splitlines()[0]})") from None
    return model


def _load_gguf_base(cfg: Config, auto_class, kwargs: dict, quiet, notes: list[str]):
    """A GGUF base, dequantized on the CPU into the training dtype, then held as an ordinary model."""
    from finetune.model import gguf as gguf_base

    folder, gguf_file = cfg.base_source
    device_map = kwargs.pop("device_map")
    try:
        with quiet:
            packed = auto_class.from_pretrained(folder, **kwargs, **gguf_base.dequantize_kwargs(cfg))
    except OSError as exc:
        raise UserError(f"base_model: cannot load {cfg.base_model!r} ({str(exc).splitlines()[0]})") from None
    model = gguf_base.plain_model(packed, kwargs["config"], kwargs["dtype"], cfg.base_model, device_map)
    notes.append(
        f"base_model: {gguf_file} dequantized from GGUF to {str(kwargs['dtype']).removeprefix('torch.')}"
    )
    return model


def _new_head_is_expected():
    """The LM checkpoint has no `score` weights and an unused lm_head: that is the point, not a warning
    (TRL's own context manager for it; a no-op where TRL lacks it)."""
    try:
        from trl.trainer.reward_trainer import suppress_seqcls_warning
    except ImportError:
        from contextlib import nullcontext

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


def count_new_tokens(cfg: Config, tokenizer) -> int:
    """How many tokens `special_tokens`/`tokens` added beyond the base tokenizer's vocabulary."""
    if not (cfg.special_tokens or cfg.tokens):
        return 0
    from finetune.data.tokenizer import load_tokenizer

    # the base tokenizer as shipped: no chat_template either (a named template may need the new tokens)
    plain = load_tokenizer(
        cfg.model_copy(update={"special_tokens": None, "tokens": None, "chat_template": None})
    )
    return max(0, len(tokenizer) - len(plain))


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


# ---------------------------------------------------------------- the stage


def cpu_threads(model, notes: list[str]) -> None:
    """Train a narrow model on one CPU thread, unless OMP_NUM_THREADS says otherwise.

    Each op of a model this small is microseconds of work, so thread hand-offs dominate; and on a busy
    machine a descheduled thread stalls every op by a scheduler tick. Measured on 2 shared cores, the
    quickstart (hidden size 64) trained in 30 s on 2 threads and 1.7 s on 1.
    """
    import torch

    hidden = getattr(model.config, "hidden_size", None)
    if torch.cuda.is_available() or "OMP_NUM_THREADS" in os.environ or not hidden or hidden >= SMALL_HIDDEN:
        return
    if torch.get_num_threads() > 1:
        torch.set_num_threads(1)
        notes.append(
            f"cpu: hidden size {hidden} is tiny, so one thread is used (faster; OMP_NUM_THREADS overrides)"
        )


def load(cfg: Config, tokenizer) -> LoadedModel:
    """Base model + LoRA adapter, in the precision and quantization the config asks for."""
    notes: list[str] = []
    prec = precision(cfg)
    model = load_base(cfg, prec, notes)
    cpu_threads(model, notes)
    quantization = quantization_of(model)
    kbit = quantization in ("4-bit", "8-bit")
    trained_embeddings = fit_vocabulary(model, tokenizer, count_new_tokens(cfg, tokenizer), notes)
    model = adapter.wrap(cfg, model, kbit, trained_embeddings, notes)
    disable_cpu_bf16_repack(model)
    trainable, total = model.get_nb_trainable_parameters()  # a 4-bit weight counts in full
    return LoadedModel(
        model=model, quantization=quantization, trainable_params=trainable, total_params=total, notes=notes
    )


def quant_storage(cfg: Config, dtype: str) -> str:
    """Storage dtype of 4-bit weights: the config's, else the training dtype under ZeRO-3, else uint8.

    ZeRO-3 flattens and shards parameters by dtype; 4-bit weights packed into uint8 next to bf16 norms and
    LoRA weights break that on GPUs (the failure peers report), while packed into the training dtype they
    shard like every other tensor (the recipe of peft's and HF's QLoRA + ZeRO-3 guides). Same NF4 values.
    """
    if cfg.bnb_4bit_quant_storage:
        return cfg.bnb_4bit_quant_storage
    return dtype if zero_stage(cfg.deepspeed) == 3 else "uint8"
