"""The base model's shapes from its config alone: every linear layer's (in, out), the embeddings, the head.

`finetune plan` must answer in well under two seconds and read no weight. Importing torch and transformers
takes ~2.4 s on a 2-core machine, so the common decoder families (Llama, Mistral, Qwen2/3, Gemma: one
attention block with q/k/v/o projections and a gated MLP per layer) are counted from config.json by the
formula their modeling files implement; `tests/plan/test_plan.py` holds that count equal to a `meta`-device
model built by transformers. Any other architecture is built on the meta device (exact, ~3 s, no weights).
A GGUF base's dimensions come from the file's metadata (gguf's reader parses the header, not the tensors).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from finetune import hub
from finetune.config import Config
from finetune.errors import UserError

# model_type -> tie_word_embeddings when config.json leaves it out (each family's PretrainedConfig default)
LLAMA_LIKE = {"llama": False, "mistral": False, "qwen2": False, "qwen3": False, "gemma": True, "gemma2": True}
# GGUF architecture -> transformers model_type (the ones LLAMA_LIKE covers)
GGUF_ARCH = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "qwen3": "qwen3", "gemma": "gemma"}


@dataclass(frozen=True)
class Linear:
    name: str  # full module name, e.g. model.layers.3.self_attn.q_proj
    in_features: int
    out_features: int

    @property
    def leaf(self) -> str:
        return self.name.rsplit(".", 1)[-1]

    @property
    def layer(self) -> int | None:
        found = re.search(r"\.layers\.(\d+)\.", self.name)
        return int(found.group(1)) if found else None


@dataclass(frozen=True)
class Shape:
    """What the estimate needs: sizes, the linear layers of the decoder (not the head), embeddings."""

    model_type: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    linears: tuple[Linear, ...]  # every nn.Linear of the decoder layers (what all-linear adapts)
    other_params: int  # norms, biases: held unquantized
    source: str = "config.json"  # how the shapes were found: "config.json" (formula) or "meta model"
    notes: list[str] = field(default_factory=list)
    # bytes per weight in the checkpoint files (config.json's dtype; bf16 if unsaid)
    checkpoint_bytes: int = 2
    # 4 or 8 for a checkpoint saved quantized (bitsandbytes' quantization_config in config.json)
    saved_bits: int | None = None

    @property
    def q_width(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def embed_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def head_params(self) -> int:
        return 0 if self.tied else self.vocab * self.hidden

    @property
    def linear_params(self) -> int:
        return sum(lin.in_features * lin.out_features for lin in self.linears)

    @property
    def total_params(self) -> int:
        return self.linear_params + self.embed_params + self.head_params + self.other_params


def from_dict(config: dict, source: str = "config.json") -> Shape:
    """Shapes of a Llama-like decoder from its config.json dict (the formula of modeling_llama & co)."""
    model_type = config.get("model_type", "")
    text = config.get("text_config") or config
    d, f = text["hidden_size"], text["intermediate_size"]
    layers, heads = text["num_hidden_layers"], text["num_attention_heads"]
    kv = text.get("num_key_value_heads") or heads
    hd = text.get("head_dim") or d // heads
    vocab = text["vocab_size"]
    tied = text.get("tie_word_embeddings", LLAMA_LIKE.get(model_type, False))
    per_layer = [("self_attn.q_proj", d, heads * hd), ("self_attn.k_proj", d, kv * hd),
                 ("self_attn.v_proj", d, kv * hd), ("self_attn.o_proj", heads * hd, d),
                 ("mlp.gate_proj", d, f), ("mlp.up_proj", d, f), ("mlp.down_proj", f, d)]  # fmt: skip
    linears = tuple(
        Linear(f"model.layers.{i}.{name}", i_f, o_f) for i in range(layers) for name, i_f, o_f in per_layer
    )
    attn_bias = text.get("attention_bias", model_type == "qwen2")
    bias = (heads * hd + 2 * kv * hd) if attn_bias else 0
    qk_norm = 2 * hd if model_type == "qwen3" else 0
    norms = (
        layers * (2 * d + bias + qk_norm) + d
    )  # two RMSNorms a layer (+ biases, q/k norms), the final norm
    return Shape(model_type, d, f, layers, heads, kv, hd, vocab, bool(tied), linears, norms, source)


def from_meta_model(config) -> Shape:
    """Shapes of any architecture transformers knows: the model built on the meta device (no memory, exact)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    linears = tuple(
        Linear(name, m.in_features, m.out_features)
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and m is not head
    )
    text = config.get_text_config()
    tied = head is not None and head.weight is embed.weight
    counted = sum(lin.in_features * lin.out_features for lin in linears) + embed.weight.numel()
    if head is not None and not tied:
        counted += head.weight.numel()
    total = sum(p.numel() for p in model.parameters())
    heads = text.num_attention_heads
    hd = getattr(text, "head_dim", None) or text.hidden_size // heads
    return Shape(
        config.model_type, text.hidden_size, getattr(text, "intermediate_size", 4 * text.hidden_size),
        text.num_hidden_layers, heads, getattr(text, "num_key_value_heads", None) or heads, hd,
        embed.weight.shape[0], tied, linears, total - counted, "meta model",
    )  # fmt: skip


def gguf_config(path: Path) -> dict:
    """config.json keys from a GGUF file's metadata (llama.cpp's names, as convert_hf_to_gguf writes them)."""
    import gguf

    reader = gguf.GGUFReader(str(path))

    def value(key: str, default=None):
        fld = reader.fields.get(key)
        if fld is None:
            return default
        if len(fld.data) == 1 and fld.types[0] != gguf.GGUFValueType.STRING:
            return fld.parts[fld.data[0]][0].item()
        return bytes(fld.parts[fld.data[0]]).decode() if fld.types[0] == gguf.GGUFValueType.STRING else None

    arch = value("general.architecture")
    if arch not in GGUF_ARCH:
        raise UserError(
            f"base_model: {path.name} is a {arch!r} GGUF; finetune plan knows {sorted(GGUF_ARCH)}"
        )
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    names = {t.name for t in reader.tensors}
    heads = value(f"{arch}.attention.head_count")
    return {
        "model_type": GGUF_ARCH[arch],
        "hidden_size": value(f"{arch}.embedding_length"),
        "intermediate_size": value(f"{arch}.feed_forward_length"),
        "num_hidden_layers": value(f"{arch}.block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": value(f"{arch}.attention.head_count_kv", heads),
        "vocab_size": value(f"{arch}.vocab_size") or (len(tokens.data) if tokens else None),
        "tie_word_embeddings": "output.weight" not in names,
    }


def config_dict(cfg: Config) -> dict:
    """The base's config as a dict: a local folder's config.json, a GGUF file's metadata, or config.json alone
    from the hub (huggingface_hub fetches that one file; offline, only the local cache is read)."""
    folder, gguf_file = cfg.base_source
    source = cfg.base_model_config or folder
    local = Path(source).expanduser()
    if gguf_file and not cfg.base_model_config:
        path = local / gguf_file
        if not path.is_file():
            from huggingface_hub import hf_hub_download

            path = Path(_hub(hf_hub_download, folder, gguf_file, cfg, hub.is_offline()))
        data = gguf_config(path)
    elif local.is_dir():
        if not (local / "config.json").is_file():
            raise UserError(f"base_model: {local} has no config.json")
        data = json.loads((local / "config.json").read_text())
    else:
        from huggingface_hub import hf_hub_download

        data = json.loads(
            Path(_hub(hf_hub_download, source, "config.json", cfg, hub.is_offline())).read_text()
        )
    for key, val in (cfg.overrides_of_model_config or {}).items():
        data[key] = val
    return data


def _hub(download, repo: str, filename: str, cfg: Config, offline: bool) -> str:
    try:
        return download(repo, filename, revision=cfg.revision_of_model, local_files_only=offline)
    except Exception as exc:  # noqa: BLE001 - every hub failure is one line naming the key
        raise UserError(
            f"base_model: cannot read {filename} of {repo!r} ({str(exc).splitlines()[0]})"
        ) from None


def shape_of(cfg: Config) -> Shape:
    """The base's shapes, by formula for the Llama-like families, else from a meta-device model."""
    data = config_dict(cfg)
    model_type = data.get("model_type", "")
    saved = str(data.get("dtype") or data.get("torch_dtype") or "bfloat16")
    checkpoint_bytes = 4 if saved == "float32" else 2
    if model_type in LLAMA_LIKE and not data.get("quantization_config", {}).get("quant_method") == "gptq":
        shape = from_dict(data)
    else:
        from transformers import AutoConfig

        if not model_type:
            raise UserError(f"base_model: {cfg.base_model}'s config has no model_type")
        try:
            shape = from_meta_model(AutoConfig.for_model(**data))
        except Exception as exc:  # noqa: BLE001 - an architecture transformers cannot build: one line
            raise UserError(
                f"base_model: cannot build a {model_type!r} model from its config ({exc})"
            ) from None
        shape.notes.append(
            f"{model_type}: shapes from a meta-device model; activations use the Llama-like layer formula"
        )
    extra = len(cfg.tokens or [])  # added tokens grow the embeddings (and train them in full)
    quant = data.get("quantization_config") or {}
    saved_bits = 4 if quant.get("load_in_4bit") else 8 if quant.get("load_in_8bit") else None
    return Shape(
        **{**shape.__dict__, "vocab": shape.vocab + extra, "checkpoint_bytes": checkpoint_bytes,
           "saved_bits": saved_bits}
    )  # fmt: skip
