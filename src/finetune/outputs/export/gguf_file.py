"""A merged model as one GGUF file: architecture metadata, tensors under llama.cpp's names, the tokenizer.

Written with the `gguf` package (the llama.cpp project's own writer, on PyPI), following what llama.cpp's
convert_hf_to_gguf.py does for these architectures:
- Llama family (Llama 2/3.x, Mistral, SmolLM2, TinyLlama: all `llama` in llama.cpp): q_proj and k_proj rows are
  permuted from the Hugging Face rotary layout (halves) to llama.cpp's (interleaved pairs); Llama 3.1's
  `llama3` rope scaling becomes a `rope_freqs` tensor, linear scaling two metadata keys.
- Qwen2/2.5 (`qwen2`, with q/k/v biases) and Qwen3 (`qwen3`, with per-head q/k norms): no permutation.
Tensor names come from gguf's TensorNameMap. 1-D tensors (norms, biases, rope factors) stay F32, as llama.cpp
keeps them; 2-D weights take the chosen type, computed in Python by gguf.quants.
"""

from __future__ import annotations

import math
from pathlib import Path

from finetune.errors import UserError
from finetune.outputs.export import gguf_vocab

# Hugging Face model_type -> llama.cpp architecture name
ARCHITECTURES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}
PERMUTED = {"llama"}  # architectures whose q/k rows llama.cpp expects interleaved
# --quant types gguf computes in Python -> (GGMLQuantizationType name, LlamaFileType name)
QUANTS = {
    "f32": ("F32", "ALL_F32"),
    "f16": ("F16", "MOSTLY_F16"),
    "bf16": ("BF16", "MOSTLY_BF16"),
    "q8_0": ("Q8_0", "MOSTLY_Q8_0"),
}
# types llama.cpp's llama-quantize makes from an f16 GGUF (k-quants, i-quants, and the small legacy ones)
NEEDS_LLAMA_QUANTIZE = (
    "q4_0 q4_1 q5_0 q5_1 q2_k q3_k_s q3_k_m q3_k_l q4_k_s q4_k_m q5_k_s q5_k_m q6_k "
    "iq1_s iq1_m iq2_xxs iq2_xs iq2_s iq2_m iq3_xxs iq3_xs iq3_s iq3_m iq4_nl iq4_xs tq1_0 tq2_0"
).split()


def check_quant(quant: str, name: str) -> None:
    """--quant: one of QUANTS, else one line (how to make the type with llama-quantize when it can)."""
    if quant in QUANTS:
        return
    if quant in NEEDS_LLAMA_QUANTIZE:
        raise UserError(
            f"--quant {quant}: needs llama.cpp's llama-quantize, which the gguf package cannot do in Python; export "
            f"--quant f16 --name {name}-f16, then run: llama-quantize OUT/{name}-f16.gguf OUT/{name}-{quant}.gguf "
            f"{quant.upper()}"
        )
    raise UserError(f"--quant: must be one of {', '.join(QUANTS)} (got {quant!r})")


def architecture(config) -> str:
    """llama.cpp's architecture for a transformers config; any other architecture is refused in one line."""
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        named = (getattr(config, "architectures", None) or [model_type])[0]
        raise UserError(
            f"base_model: GGUF export supports the Llama family (Llama, Mistral, SmolLM2, TinyLlama) and Qwen2/2.5/3, "
            f"not {named} (model_type {model_type!r}); `finetune merge` writes a safetensors folder for it"
        )
    return ARCHITECTURES[model_type]


def _rope(config) -> tuple[float, dict]:
    """(rope_theta, scaling parameters) from a transformers 4.x or 5.x config."""
    params = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    theta = params.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    return float(theta), params


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def permute(weights, n_head: int):
    """q/k rows from Hugging Face's rotary layout (first half, second half of each head) to llama.cpp's pairs."""
    shape = weights.shape
    return weights.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def llama3_rope_factors(config, params: dict):
    """Llama 3.1's frequency scaling as the per-dimension factors llama.cpp reads from `rope_freqs`."""
    import numpy as np

    theta, _ = _rope(config)
    dim = head_dim(config)
    factor = params.get("factor", 8.0)
    low, high = params.get("low_freq_factor", 1.0), params.get("high_freq_factor", 4.0)
    old_len = params.get("original_max_position_embeddings", 8192)
    factors = []
    for freq in 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float32) / dim):
        wavelen = 2 * math.pi / freq
        if wavelen < old_len / high:
            factors.append(1.0)
        elif wavelen > old_len / low:
            factors.append(factor)
        else:
            smooth = (old_len / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(factors, dtype=np.float32)


def _add_hparams(writer, config, arch: str, name: str) -> dict:
    """Architecture metadata; returns the rope scaling parameters (llama3 scaling needs a tensor)."""
    writer.add_type("model")
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    theta, params = _rope(config)
    writer.add_rope_freq_base(theta)
    dim = head_dim(config)
    if dim != config.hidden_size // config.num_attention_heads:
        writer.add_key_length(dim)
        writer.add_value_length(dim)
    if arch == "llama":
        writer.add_vocab_size(config.vocab_size)
        writer.add_rope_dimension_count(dim)
    return _add_rope_scaling(writer, params)


def _add_rope_scaling(writer, params: dict) -> dict:
    import gguf

    kind = params.get("rope_type") or params.get("type") or "default"
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(params["factor"])
    elif kind == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(params["factor"])
        writer.add_rope_scaling_orig_ctx_len(params["original_max_position_embeddings"])
    elif kind not in ("default", "llama3"):
        raise UserError(
            f"base_model: rope scaling {kind!r} has no GGUF export here (default, linear, llama3, yarn)"
        )
    return params if kind == "llama3" else {}


def _tensor_data(array, quant: str):
    """(data, raw GGML type or None) for one tensor: 1-D stays F32; a row not divisible into Q8_0 blocks
    falls back to F16, as convert_hf_to_gguf.py does."""
    import gguf
    import numpy as np

    array = np.ascontiguousarray(array, dtype=np.float32)
    qtype = gguf.GGMLQuantizationType[QUANTS[quant][0]]
    if array.ndim <= 1 or qtype == gguf.GGMLQuantizationType.F32:
        return array, None
    if qtype == gguf.GGMLQuantizationType.F16:
        return array.astype(np.float16), None
    try:
        return gguf.quants.quantize(array, qtype), qtype
    except gguf.QuantError:
        return array.astype(np.float16), None


def write(
    path: Path,
    state_dict: dict,
    config,
    tokenizer,
    quant: str,
    name: str,
    *,
    eot_tokens=(),
    add_bos: bool,
    chat_template: str | None,
) -> int:
    """Write the GGUF file; returns how many tensors it holds. `add_bos`: whether training's prompts began with
    BOS; `chat_template`: the Jinja template llama.cpp's chat endpoints should render (the run's format)."""
    import gguf

    arch = architecture(config)
    writer = gguf.GGUFWriter(str(path), arch)
    scaling = _add_hparams(writer, config, arch, name)
    writer.add_file_type(gguf.LlamaFileType[QUANTS[quant][1]])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    n_rows = state_dict["model.embed_tokens.weight"].shape[0]
    vocab = gguf_vocab.build(tokenizer, n_rows, eot_tokens)
    vocab.add_bos, vocab.chat_template = add_bos, chat_template
    gguf_vocab.add_to(writer, vocab)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], config.num_hidden_layers)
    n_head = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_head
    count = 0
    if scaling:
        factors = llama3_rope_factors(config, scaling)
        writer.add_tensor(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", factors)
        count += 1
    tied = bool(getattr(config, "tie_word_embeddings", False))
    for hf_name, tensor in state_dict.items():
        if hf_name == "lm_head.weight" and tied:
            continue  # llama.cpp reuses token_embd when there is no output tensor
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise UserError(f"{hf_name}: no GGUF name for this tensor of a {arch} model; export refused")
        array = tensor.float().numpy()
        if arch in PERMUTED and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            array = permute(array, n_head)
        elif arch in PERMUTED and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            array = permute(array, n_kv)
        data, raw = _tensor_data(array, quant)
        writer.add_tensor(gguf_name, data, raw_dtype=raw)
        count += 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return count
