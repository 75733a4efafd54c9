"""A GGUF file as the base model: read by transformers, dequantized, then held as an ordinary model.

`base_model: folder/model.Q4_1.gguf` (or a folder/hub repo plus `gguf_file:`) is read by transformers' own GGUF
loader (the `gguf` package parses it). Its weights are dequantized to the training dtype: LoRA trains on plain
`nn.Linear` layers, and merge writes an ordinary safetensors folder. The tokenizer and chat template come from
the same file (tokenizer.load_tokenizer passes `gguf_file` too).

transformers marks a GGUF-loaded model as "quantized with gguf" (not trainable, not serializable) even when every
weight was dequantized, so `plain_model` rebuilds it from its state dict with the public
`from_pretrained(None, config=..., state_dict=...)`: the same tensors, no GGUF quantizer attached.
"""

from __future__ import annotations

from pathlib import Path

from finetune.config import Config


def dequantize_kwargs(cfg: Config) -> dict:
    """from_pretrained arguments that load a GGUF base with every weight dequantized.

    With the `kernels` package installed, transformers >= 5.24 keeps GGUF weights packed in its own linear
    layers, which LoRA cannot wrap; `GgufConfig(dequantize=True)` asks for plain weights. Older versions have
    no GgufConfig and always dequantize.
    """
    gguf_file = cfg.base_source[1]
    return _dequantized(gguf_file) if gguf_file else {}


def load_kwargs(gguf_file: str) -> dict:
    """from_pretrained arguments that read `gguf_file` with every weight dequantized (export's read-back check)."""
    return _dequantized(gguf_file)


def _dequantized(gguf_file: str) -> dict:
    kwargs: dict = {"gguf_file": gguf_file}
    try:
        from transformers import GgufConfig
    except ImportError:
        return kwargs
    kwargs["quantization_config"] = GgufConfig(dequantize=True)
    return kwargs


def plain_model(model, config, dtype, name: str, device_map=None, attn_implementation: str | None = None):
    """The dequantized GGUF model as an ordinary transformers model (same weights, trainable, saveable).

    `name` (the config's base_model) becomes its name_or_path, which peft writes into adapter_config.json.
    """
    plain = type(model).from_pretrained(
        None,
        config=config,
        state_dict=model.state_dict(),
        dtype=dtype,
        device_map=device_map,
        attn_implementation=attn_implementation,
    )
    plain.name_or_path = plain.config.name_or_path = name
    if getattr(model, "generation_config", None) is not None and plain.can_generate():
        plain.generation_config = model.generation_config
    return plain


def local_file(cfg: Config) -> Path | None:
    """Where the GGUF base lies on this machine: the local file, or the hub cache's copy (None if neither)."""
    folder, gguf_file = cfg.base_source
    if not gguf_file:
        return None
    path = Path(folder).expanduser() / gguf_file
    if path.is_file():
        return path
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(folder, gguf_file, revision=cfg.revision_of_model)
    return Path(cached) if isinstance(cached, str) else None


def quantization_type(path: Path) -> str | None:
    """The GGUF file's weight type as llama.cpp names it (Q4_1, Q8_0, F16 ...), from its metadata."""
    import gguf

    field = gguf.GGUFReader(str(path)).fields.get("general.file_type")
    if field is None:
        return None
    value = int(field.parts[field.data[0]][0])
    try:
        return gguf.LlamaFileType(value).name.removeprefix("MOSTLY_")
    except ValueError:
        return str(value)


def facts(cfg: Config) -> dict:
    """What the card says of a GGUF base: the file and its quantization (the weights were dequantized from it)."""
    if not cfg.base_is_gguf:
        return {}
    path = local_file(cfg)
    return {
        "base_gguf_file": cfg.base_source[1],
        "base_gguf_quantization": quantization_type(path) if path else None,
    }


def write_folder(gguf_path: str | Path, out: str | Path) -> Path:
    """Save a GGUF model as an ordinary HF folder (dequantized fp32 weights + tokenizer + chat template).

    What the tests and benchmarks compare against: the same weights finetune trains on when `base_model`
    names the file, loaded without GGUF by any tool (a hand-written script, axolotl).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf_path, out = Path(gguf_path), Path(out)
    folder, name = str(gguf_path.parent), gguf_path.name
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    packed = AutoModelForCausalLM.from_pretrained(
        folder, config=config, dtype=torch.float32, **_dequantized(name)
    )
    plain_model(packed, config, torch.float32, str(out)).save_pretrained(out)
    AutoTokenizer.from_pretrained(folder, gguf_file=name).save_pretrained(out)
    return out
