"""`finetune merge`: fold a run's adapter into a 16/32-bit copy of its base and save a standalone model.

The base is never merged in 4-bit (rounding LoRA's delta into NF4 weights is a classic source of broken
merges). A QLoRA adapter was trained against NF4 weights, though, so `dequantize=True` first rounds the
base through NF4 and back, exactly as bitsandbytes did in training, and merges into that. After saving,
the merged folder is loaded again and its logits are compared with base + adapter on a few prompts.
"""

from __future__ import annotations

import gc
import math
import shutil
from contextlib import nullcontext
from pathlib import Path

from finetune import hub, methods, quiet
from finetune.data.tokenizer import load_saved_tokenizer
from finetune.errors import UserError
from finetune.files import atomic_dir
from finetune.model import (
    Precision,
    generation,
    gguf_base,
    load_model_config,
    new_head_is_expected,
    quantization_config,
)
from finetune.outputs import card, run_dir

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
# Precision the run trained in (train/__init__.py writes all_results.json["mixed_precision"]): the dtype the 4-bit
# weights were quantized from, which --dequantize must reproduce to round the same way.
_TRAIN_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "no": "float32", "fp32": "float32"}
CHECK_PROMPTS = ("What does EBITDA stand for?", "Net income rose 12% in 2023 because", "Hello")
# Largest |logit difference| allowed between the saved merged model and base + adapter, as a share of the
# largest |logit| of base + adapter (at least 1, so the near-zero logits of tiny test models are not held to a
# bound below rounding). Both compute the same function and differ only in rounding: base + adapter keeps W
# and BA apart, the merge rounds W + BA to the dtype once, and that adds up over the layers. Measured on the
# real SmolLM2-135M (30 layers, logits up to 38, LoRA r=8 on every linear layer): fp32 1.4e-6 of the largest
# logit (summation order only), fp16 (11 mantissa bits) 0.4%, bf16 (8 bits) 2.5%. The limits leave 4-70x
# room for deeper models; a broken merge (adapter lost or scaled wrong, a wrong base, inf/nan) is caught
# when it moves logits by more than that, which in bf16 means an adapter effect larger than bf16's own noise.
CHECK_TOLERANCE = {"fp32": 1e-4, "fp16": 0.02, "bf16": 0.1}


class CheckFailed(Exception):
    """The saved merged model does not compute what base + adapter computes: nothing is kept (exit 1)."""


def _torch_dtype(name: str):
    import torch

    return getattr(torch, name)


def base_config(run: run_dir.Run):
    """The base's model config (cheap): tells a checkpoint saved quantized before any weight is read."""
    return load_model_config(run.cfg)


def auto_class(run: run_dir.Run):
    """What the run trained: a reward model is the base with a one-output score head (saved with the adapter)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    return AutoModelForSequenceClassification if methods.of(run.cfg).score_head else AutoModelForCausalLM


def load_base(run: run_dir.Run, config, dtype: str, quantization=None, device: str = "cpu"):
    """The config's base_model in `dtype`, on the CPU. A checkpoint saved quantized (e.g. unsloth/...-bnb-4bit)
    loads quantized whatever we ask, so it is dequantized: those are exactly the weights training saw. With
    `quantization` (the run's BitsAndBytesConfig) the base is quantized on `device` as training did, then
    dequantized by bitsandbytes (`model.dequantize()`): the NF4-rounded weights the adapter was trained on."""
    cfg = run.cfg
    if methods.of(cfg).score_head:
        config.num_labels = 1  # the score head; its trained weights come with the adapter
    placement = {"quantization_config": quantization, "device_map": {"": device}} if quantization else {}
    try:
        with new_head_is_expected() if methods.of(cfg).score_head else nullcontext():
            model = auto_class(run).from_pretrained(
                cfg.base_source[0], config=config, dtype=_torch_dtype(dtype),
                revision=cfg.revision_of_model, trust_remote_code=cfg.trust_remote_code, **hub.loader_kwargs(),
                **gguf_base.dequantize_kwargs(cfg), **placement,
            )  # fmt: skip
    except OSError as exc:
        raise UserError(f"base_model: cannot load {cfg.base_model!r} ({str(exc).splitlines()[0]})") from None
    if cfg.base_is_gguf:  # dequantized from GGUF, as in training: held as an ordinary model so it saves
        return gguf_base.plain_model(model, config, _torch_dtype(dtype), cfg.base_model)
    if getattr(model, "hf_quantizer", None) is not None:
        if quantization is None:
            print(
                f"base_model: {cfg.base_model} is saved quantized; dequantizing it to {dtype} before merging"
            )
        model = model.dequantize(dtype=_torch_dtype(dtype)).to("cpu")  # bnb may have placed it on a GPU
        model.config.dtype = _torch_dtype(dtype)
        forget_bnb_loading_steps(model)
    return model


def forget_bnb_loading_steps(model) -> None:
    """Workaround: transformers 5.x `dequantize()` keeps the bitsandbytes deserialize steps in
    `model._weight_conversions`, and `save_pretrained` then fails trying to reverse them
    (NotImplementedError in `reverse_op`; https://github.com/huggingface/transformers/pull/45743).
    The weights are plain tensors now, so those steps no longer apply; every other step is kept."""
    from transformers.integrations.bitsandbytes import Bnb4bitDeserialize, Bnb8bitDeserialize

    steps = getattr(model, "_weight_conversions", None)
    if steps:
        bnb_ops = (Bnb4bitDeserialize, Bnb8bitDeserialize)
        model._weight_conversions = [
            s for s in steps if not any(isinstance(op, bnb_ops) for op in getattr(s, "operations", ()))
        ]


def nf4_settings(run: run_dir.Run, train_dtype: str):
    """The run's own BitsAndBytesConfig (finetune.model.quantization_config), for the dtype it trained in:
    NF4 of bf16-rounded weights is not NF4 of fp32 ones."""
    prec = Precision(bf16=False, fp16=False, tf32=None, dtype=train_dtype)
    return quantization_config(run.cfg, prec)


def training_dtype(run: run_dir.Run, fallback: str) -> str:
    """The dtype the base was loaded in for training, which its 4-bit weights were quantized from."""
    return _TRAIN_DTYPES.get(str(run_dir.fact(run, "mixed_precision") or "").lower(), fallback)


def quantization_device(run: run_dir.Run) -> str:
    """Where to round through NF4: the kind of device training quantized on (all_results.json["device"]),
    else CUDA when there is one. bitsandbytes' CUDA and CPU kernels do not round alike: on an H100, bf16
    weights with double quantization differed in ~0.06% of values (by up to one bf16 step), fp32 ones in
    most values (double-quantized absmax differs), so a GPU-trained adapter is merged exactly only on a GPU."""
    import torch

    trained_on = str(run_dir.fact(run, "device") or "").split(":")[0]
    if torch.cuda.is_available() and trained_on != "cpu":
        return "cuda"
    if trained_on == "cuda":
        print(
            "note: this run quantized on a GPU; rounding through NF4 on the CPU differs from it in the last bit "
            "of a few weights (merge on a GPU machine for an exact copy)"
        )
    return "cpu"


def prompt_ids(tokenizer) -> list:
    return [tokenizer(p, return_tensors="pt")["input_ids"] for p in CHECK_PROMPTS]


def logits(model, prompts: list) -> list:
    import torch

    model.eval()
    with torch.no_grad():
        return [model(input_ids=ids.to(model.device)).logits.float().cpu() for ids in prompts]


def max_difference(a: list, b: list) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


def check_limit(reference: list, dtype: str) -> float:
    """The largest |logit difference| a correct merge in `dtype` may show (CHECK_TOLERANCE)."""
    scale = max(float(r.abs().max()) for r in reference)
    return CHECK_TOLERANCE[dtype] * max(1.0, scale)


def _check_paths(output_dir: Path, out: Path) -> None:
    src, dst = output_dir.resolve(), out.resolve()
    if dst == src or src.is_relative_to(dst):
        raise UserError(
            f"--out {out}: would replace the run folder {output_dir} itself; choose another folder"
        )
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")


def merge_command(
    output_dir: str | Path,
    out: str | Path,
    dtype: str = "bf16",
    dequantize: bool = False,
    overwrite: bool = False,
    max_shard_size: str = "5GB",
    announce: bool = True,
    trust_remote_code: bool = False,
) -> float:
    """Merge output_dir's adapter into its base; save model, tokenizer, generation config and card in `out`.

    Returns the largest |logit difference| between the saved merged model and base + adapter; raises
    CheckFailed, leaving `out` as it was, when that is above the dtype's CHECK_TOLERANCE.
    """

    quiet.false_alarms()
    output_dir, out = Path(output_dir), Path(out)
    if dtype not in DTYPES:
        raise UserError(f"--dtype: must be one of {', '.join(DTYPES)} (got {dtype!r})")
    run = run_dir.read_run(output_dir, trust_remote_code=trust_remote_code)
    if run.cfg.adapter is None:
        raise UserError(
            f"{output_dir}: a full fine-tune (no adapter): nothing to merge, the folder holds the whole model "
            "(load it with from_pretrained, or finetune export / push it as it is)"
        )
    if run.adapter_dir is None:
        raise UserError(f"{output_dir}: no adapter_config.json here or in a checkpoint-* folder")
    offline = hub.offline_if_unreachable(run.cfg.hub_ids)
    if offline:
        print(f"note: {offline}")
    if run.adapter_dir != output_dir:
        print(
            f"{output_dir}: no final adapter (interrupted run?); merging the newest checkpoint {run.adapter_dir}"
        )
    _check_paths(output_dir, out)
    torch_dtype = DTYPES[dtype]
    config = base_config(run)
    prequantized = getattr(config, "quantization_config", None) is not None
    if dequantize and not (run.cfg.quantized_4bit or prequantized):
        raise UserError("--dequantize: this run trained on a 16/32-bit base, not a 4-bit one; leave it out")

    with atomic_dir(out, overwrite=overwrite) as tmp:
        print(f"loading {run.cfg.base_model} in {dtype}")
        tokenizer = load_saved_tokenizer(run.adapter_dir, run.cfg)  # training may have added tokens
        if dequantize and not prequantized:
            train_dtype = training_dtype(run, torch_dtype)
            device = quantization_device(run)
            base = load_base(run, config, train_dtype, nf4_settings(run, train_dtype), device)
            base = base.to(_torch_dtype(torch_dtype))
            print(f"rounded the base through NF4 and back from {train_dtype} on {device}, as in training")
        else:
            base = load_base(run, config, torch_dtype)
        if run.cfg.quantized_4bit and not (dequantize or prequantized):
            print("note: the adapter was trained on NF4 weights; --dequantize merges into exactly those")
        if methods.of(run.cfg).score_head and tokenizer.pad_token_id is not None:
            base.config.pad_token_id = tokenizer.pad_token_id  # a score is read at the last non-pad token
        model = generation.attach_adapter(base, tokenizer, run.adapter_dir)
        prompts = prompt_ids(tokenizer)
        reference = logits(model, prompts)

        merged = model.merge_and_unload(progressbar=True)
        if tokenizer.pad_token_id is not None:
            merged.config.pad_token_id = tokenizer.pad_token_id
        merged.save_pretrained(tmp, max_shard_size=max_shard_size)
        tokenizer.save_pretrained(tmp)
        del model, merged, base
        gc.collect()  # free the first copy before the saved one is loaded: peak memory stays one model

        reloaded = auto_class(run).from_pretrained(tmp, dtype=_torch_dtype(torch_dtype))
        diff = max_difference(logits(reloaded, prompts), reference)
        del reloaded
        print(f"check: max |logit difference| between the saved merged model and base + adapter = {diff:.3g}")
        limit = check_limit(reference, dtype)
        if not (math.isfinite(diff) and diff <= limit):  # raised inside atomic_dir: nothing lands in `out`
            raise CheckFailed(
                f"merge check failed: max |logit difference| {diff:.3g} between the saved merged model and base "
                f"+ adapter is above the {dtype} tolerance {limit:.3g}; nothing was written to {out}"
            )

        for plot in ("loss.png", "reward.png"):
            if (output_dir / plot).is_file():
                shutil.copy2(output_dir / plot, tmp / plot)
        shutil.copy2(output_dir / "config.yml", tmp / "config.yml")
        merged_info = card.Merged(
            out=out, dtype=dtype, dequantize=dequantize or prequantized, max_logit_diff=diff
        )
        card.write_card(output_dir, merged_info, dest=tmp)
    if announce:  # export merges into a scratch folder of its own: no "wrote" line for that one
        print(f"wrote the merged model to {out}")
    return diff
