"""The run's tokenizer as GGUF metadata: vocabulary, merges, token types, special ids, add_bos, chat template.

What matters is that llama.cpp (and Ollama, LM Studio) split text into the same ids training used, so every
fact is read from the tokenizer the run saved (tokens it added, its pad token, its chat template), not from
the base model's files. llama.cpp names the pre-tokenizer (how text is cut before BPE merges run) instead of
storing it, so the run's pre-tokenizer is matched against the ones we can name exactly; anything else is
refused rather than exported to tokenize differently from training (a known source of broken GGUF exports).

Two vocabulary kinds, as llama.cpp's convert_hf_to_gguf.py writes them:
- `gpt2`: byte-level BPE (Llama 3, SmolLM2, Qwen2/2.5/3, finetune's tiny model): tokens in the byte alphabet,
  the merges list, tokens added by the run marked CONTROL (special) or USER_DEFINED.
- `llama`: sentencepiece-style BPE with byte fallback (Llama 2, Mistral, TinyLlama): `▁` for spaces, `<0xNN>`
  byte tokens, and a score per token that llama.cpp's tokenizer merges by (here minus the merge rank that
  makes the token, which orders merges as the tokenizer.json merge list does).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from finetune.errors import UserError

# The text splits that llama.cpp knows by name (llama-vocab.cpp); written as tokenizer.json spells them.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")
# gguf.TokenType values (kept as ints so this module needs no gguf import to be read)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


@dataclass
class Vocab:
    """Everything tokenizer.* in the GGUF says."""

    model: str  # tokenizer.ggml.model: gpt2 | llama
    pre: str  # tokenizer.ggml.pre
    tokens: list[str]
    types: list[int]
    merges: list[str]
    scores: list[float] | None
    special_ids: dict[str, int] = field(default_factory=dict)  # bos, eos, unk, pad, eot
    add_bos: bool = False
    add_space_prefix: bool | None = None
    chat_template: str | None = None


def _pre_tokenizer_name(pre: dict | None) -> str | None:
    """llama.cpp's name for a byte-level BPE pre-tokenizer, or None when it is none we can name exactly."""
    if not pre:
        return None
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [p.get("type") for p in parts]
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"  # GPT-2's own split inside ByteLevel (the tiny model; SmolLM2 as read from its GGUF)
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits") and parts[1].get("use_regex"):
        return "smollm"  # SmolLM's tokenizer.json: each digit alone, then GPT-2's split
    if kinds == ["Split", "ByteLevel"] and not parts[1].get("use_regex", True):
        regex = parts[0].get("pattern", {}).get("Regex")
        return {LLAMA3_SPLIT: "llama-bpe", QWEN2_SPLIT: "qwen2"}.get(regex)
    return None


def _merges(model: dict) -> list[str]:
    """'a b' strings, as GGUF stores them (tokenizers >= 0.20 writes pairs; a space inside one is escaped)."""
    out = []
    for merge in model.get("merges") or []:
        if isinstance(merge, str):
            out.append(merge)
        else:
            out.append(
                " ".join("".join(chr(ord(c) + 256) if c == " " else c for c in part) for part in merge)
            )
    return out


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer puts BOS in front of a text, measured (not read from a flag)."""
    bos = tokenizer.bos_token_id
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bos is not None and bool(ids) and ids[0] == bos


def build(tokenizer, n_rows: int, eot_tokens: tuple[str, ...] = ()) -> Vocab:
    """The Vocab of `tokenizer` for a model with `n_rows` embedding rows (ids beyond the tokenizer: [PADn]).

    `eot_tokens` are the run's end-of-turn tokens; the first one that is not EOS becomes eot_token_id.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise UserError(
            "tokenizer: export needs a fast tokenizer (tokenizer.json); this run saved a slow one"
        )
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec["model"]
    if model.get("type") != "BPE":
        raise UserError(
            f"tokenizer: a {model.get('type')} tokenizer has no GGUF export here (BPE only: Llama, Mistral, Qwen, SmolLM)"
        )
    byte_fallback = bool(model.get("byte_fallback"))
    if byte_fallback:
        kind, pre = "llama", "default"
    else:
        kind, pre = "gpt2", _pre_tokenizer_name(spec.get("pre_tokenizer"))
        if pre is None:
            raise UserError(
                "tokenizer: its pre-tokenizer is none llama.cpp knows by name (gpt-2, smollm, llama-bpe, qwen2), so "
                "a GGUF would split text differently from training; export refused"
            )
    vocab = tokenizer.get_vocab()
    if len(vocab) > n_rows:
        raise UserError(
            f"tokenizer: {len(vocab)} tokens but the model has {n_rows} embedding rows; was the run's tokenizer saved?"
        )
    by_id = {i: t for t, i in vocab.items()}
    special_ids = set(tokenizer.all_special_ids)
    added = {tok.content: (i, tok.special) for i, tok in tokenizer.added_tokens_decoder.items()}
    merges = _merges(model)
    rank = {m.replace(" ", ""): k for k, m in enumerate(merges)} if byte_fallback else {}
    tokens, types, scores = [], [], []
    for i in range(n_rows):
        text = by_id.get(i)
        if text is None:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
            scores.append(-1000.0)
            continue
        if byte_fallback and _BYTE_TOKEN.fullmatch(text):  # even when a tokenizer lists them as added tokens
            kind_of = BYTE
        elif i == tokenizer.unk_token_id:
            kind_of = UNKNOWN
        elif text in added and (i in special_ids or added[text][1]):
            kind_of = CONTROL
        elif text in added:
            kind_of = USER_DEFINED
        else:
            kind_of = NORMAL
        tokens.append(text)
        types.append(kind_of)
        scores.append(-float(rank[text]) if text in rank else (0.0 if kind_of in (NORMAL, BYTE) else -1000.0))
    ids = {
        "bos": tokenizer.bos_token_id,
        "eos": tokenizer.eos_token_id,
        "unk": tokenizer.unk_token_id,
        "pad": tokenizer.pad_token_id,
    }
    eot = next((t for t in eot_tokens if t in vocab and vocab[t] != tokenizer.eos_token_id), None)
    if eot is not None:
        ids["eot"] = vocab[eot]
    return Vocab(
        model=kind,
        pre=pre,
        tokens=tokens,
        types=types,
        merges=merges,
        scores=scores if byte_fallback else None,
        special_ids={k: v for k, v in ids.items() if isinstance(v, int)},
        add_bos=adds_bos(tokenizer),
        add_space_prefix=_metaspace_prefix(spec) if byte_fallback else None,
        chat_template=getattr(tokenizer, "chat_template", None) or None,
    )


def _metaspace_prefix(spec: dict) -> bool:
    """Sentencepiece-style tokenizers put `▁` before the first word (Metaspace prepend_scheme first/always,
    or a Prepend normalizer, as Llama 2's tokenizer.json has)."""
    text = json.dumps(spec.get("pre_tokenizer")) + json.dumps(spec.get("normalizer"))
    return '"prepend_scheme": "first"' in text or '"prepend_scheme": "always"' in text or '"Prepend"' in text


def add_to(writer, vocab: Vocab) -> None:
    """Write the vocabulary into a gguf.GGUFWriter."""
    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    if vocab.merges:
        writer.add_token_merges(vocab.merges)
    for kind, token_id in vocab.special_ids.items():
        getattr(writer, f"add_{kind}_token_id")(token_id)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(False)  # training appends EOS to answers, never to prompts
    if vocab.add_space_prefix is not None:
        writer.add_add_space_prefix(vocab.add_space_prefix)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)
