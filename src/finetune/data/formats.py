"""Prompt formats: one row -> the text the model sees, split into a masked prompt and a trained answer.

Each `type:` of a dataset entry becomes a `Format` once (`build_format`), then rows go through
`encode_batch` in batches (the same code runs in worker processes). The token layout follows axolotl so
existing configs train on the same tokens:

- custom dict / `alpaca` (and `alpaca:<style>`): prompt = system_format.format(system) +
  format.format(instruction, input), tokenized with the tokenizer's special tokens (BOS); the answer is tokenized on its own, without special tokens, and
  EOS is appended. Prompt labels are -100 unless train_on_inputs.
- `completion`: the text is the answer (BOS masked, EOS appended and trained); a text longer than
  sequence_len is split into chunks afterwards (encode._chunks), as axolotl does.
- `chat_template`: see chat.py (the template's own BOS; trained turns + their end-of-turn token).
- `input_output`: the row's segments tokenized one by one without special tokens and joined (the texts carry
  any BOS/EOS, as in axolotl); segments with label true are trained.

A row never raises: it gets a status (ok, empty answer, error) and an error text, so the caller can report
the first bad row by file and line after a multi-process map, without writing anything.
"""

from __future__ import annotations

from dataclasses import dataclass

from finetune.config import Config, DatasetConfig, DatasetType
from finetune.data.chat import ChatSpec, chat_spec, encode_chat
from finetune.data.mistral_chat import encode_chat_mistral
from finetune.data.rows import EMPTY, ERROR, IGNORE, OK, Format, RowError, text_value  # noqa: F401 - re-exported
from finetune.data.tokenizer import is_mistral_common
from finetune.errors import UserError

ALPACA_SYSTEM = "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request."
ALPACA_SYSTEM_NO_INPUT = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
# axolotl's alpaca prompt styles (`type: alpaca:<style>`): (format, no_input_format, system_format)
ALPACA_TURNS = {
    "instruct": (
        "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n",
        "### Instruction:\n{instruction}\n\n### Response:\n",
        "{system}\n\n",
    ),
    "chat": (
        "USER: {instruction}\n{input}\nASSISTANT:",
        "USER: {instruction}\nASSISTANT:",
        "SYSTEM: {system}\n",
    ),
    "chatml": (
        "<|im_start|>user\n{instruction}\n{input}<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|>user\n{instruction}<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|>system\n{system}<|im_end|>\n",
    ),
    "phi": (
        "<|user|>\n{instruction}<|end|>{input}<|assistant|>",
        "<|user|>\n{instruction}<|end|>\n<|assistant|>\n",
        "<|system|>\n{system}<|end|>\n",
    ),
}


@dataclass(frozen=True)
class TextSpec:
    """A text format: which fields to read and how to lay them out (custom dict, alpaca, completion)."""

    field_instruction: str
    field_output: str | None  # None: completion (the instruction field is the whole trained text)
    field_input: str | None = None
    field_system: str | None = None
    system_prompt: str = ""
    system_prompt_no_input: str = ""
    format: str = "{instruction}"
    no_input_format: str | None = None
    system_format: str = "{system}"


@dataclass(frozen=True)
class SegmentsSpec:
    """`input_output`: a row is a list of {text, label} segments, tokenized one by one without special tokens
    and joined; the segments with label true are trained (axolotl's template-free format)."""

    field: str = "segments"


def build_format(cfg: Config, ds: DatasetConfig, where: str, tokenizer) -> Format:
    """The Format of one dataset entry; a bad template or mapping raises UserError naming `where` (key path)."""
    t = ds.type
    if isinstance(t, DatasetType):
        spec: TextSpec | ChatSpec | SegmentsSpec = TextSpec(
            field_instruction=t.field_instruction,
            field_output=t.field_output,
            field_input=t.field_input,
            field_system=t.field_system,
            # axolotl reads system_prompt only when no field_system is set (a row's system wins otherwise).
            system_prompt="" if t.field_system else t.system_prompt,
            system_prompt_no_input="" if t.field_system else t.system_prompt,
            format=t.format,
            no_input_format=t.no_input_format,
            system_format=t.system_format,
        )
        for key in ("format", "no_input_format", "system_format"):
            _check_placeholders(getattr(t, key), key, f"{where}.type")
    elif t == "alpaca" or t.startswith("alpaca:"):
        turn, no_input_turn, system_format = ALPACA_TURNS[t.partition(":")[2] or "instruct"]
        spec = TextSpec(
            field_instruction="instruction",
            field_output="output",
            field_input="input",
            system_prompt=ALPACA_SYSTEM,
            system_prompt_no_input=ALPACA_SYSTEM_NO_INPUT,
            format=turn,
            no_input_format=no_input_turn,
            system_format=system_format,
        )
    elif t == "completion":
        spec = TextSpec(field_instruction=ds.field or "text", field_output=None)
    elif t == "input_output":
        spec = SegmentsSpec()
    else:
        spec = chat_spec(cfg, ds, where, tokenizer)
    # completion: raw text longer than sequence_len is split into chunks, never dropped or truncated (as
    # axolotl's completion strategy does); overlap_len < sequence_len is checked with the config
    chunk_step = cfg.sequence_len - (ds.overlap_len or 0) if t == "completion" else 0
    truncate = cfg.excess_length_strategy == "truncate" and not chunk_step
    return Format(spec, cfg.train_on_inputs, cfg.sequence_len, truncate, chunk_step, cfg.min_sample_len or 0)


def _check_placeholders(template: str | None, key: str, where: str) -> None:
    if template is None:
        return
    try:
        template.format(instruction="", input="", system="")
    except (KeyError, IndexError, ValueError) as exc:
        raise UserError(
            f"{where}.{key}: bad template {template!r} ({exc.__class__.__name__}: {exc}); use {{instruction}}, {{input}} and {{system}}, and double literal braces"
        ) from None


# ---------------------------------------------------------------- rendering (shared with generation)


def render_text(spec: TextSpec, row: dict) -> tuple[str, str]:
    """(prompt, answer) of a text-format row, exactly as training lays them out."""
    if spec.field_output is None:
        return "", text_value(row, spec.field_instruction)
    instruction = text_value(row, spec.field_instruction)
    answer = text_value(row, spec.field_output)
    text_input = text_value(row, spec.field_input, required=False) if spec.field_input else ""
    system = text_value(row, spec.field_system, required=False) if spec.field_system else ""
    if text_input:
        system = system or spec.system_prompt
        prompt = spec.format.format(instruction=instruction, input=text_input)
    else:
        system = system or spec.system_prompt_no_input
        no_input = spec.no_input_format if spec.no_input_format is not None else spec.format
        prompt = no_input.format(instruction=instruction, input="")
    if system and spec.system_format:
        prompt = spec.system_format.format(system=system) + prompt
    return prompt, answer


# ---------------------------------------------------------------- tokenizing batches


def encode_batch(fmt: Format, tokenizer, rows: dict[str, list]) -> dict[str, list]:
    """Tokenize a batch (column -> values): input_ids, labels, trained (count), status (OK/EMPTY/ERROR), error, truncated."""
    n = len(next(iter(rows.values()))) if rows else 0
    records = [{k: v[i] for k, v in rows.items()} for i in range(n)]
    if isinstance(fmt.spec, ChatSpec):
        encode = encode_chat_mistral if is_mistral_common(tokenizer) else encode_chat
    elif isinstance(fmt.spec, SegmentsSpec):
        encode = _encode_segments
    else:
        encode = _encode_text
    ids, labels, trained, status, errors = encode(fmt, tokenizer, records)
    truncated = [False] * n
    for i in range(n):
        if status[i] != OK:
            ids[i], labels[i], trained[i] = [], [], 0
        elif len(ids[i]) > fmt.sequence_len and fmt.truncate:
            ids[i], labels[i], truncated[i] = ids[i][: fmt.sequence_len], labels[i][: fmt.sequence_len], True
            trained[i] = sum(1 for t in labels[i] if t != IGNORE)
    return {
        "input_ids": ids,
        "labels": labels,
        "trained": trained,
        "status": status,
        "error": errors,
        "truncated": truncated,
    }


def _encode_text(fmt: Format, tokenizer, records: list[dict]):
    prompt_ids, answer_ids, status, errors = text_pieces(fmt, tokenizer, records)
    ids, labels, trained = [], [], []
    for p, a in zip(prompt_ids, answer_ids, strict=True):
        ids.append(p + a)
        labels.append(p + a if fmt.train_on_inputs else [IGNORE] * len(p) + a)
        trained.append(len(p) + len(a) if fmt.train_on_inputs else len(a))
    return ids, labels, trained, status, errors


def text_pieces(fmt: Format, tokenizer, records: list[dict]):
    """(prompt ids, answer ids ending in EOS, status, error) per row of a text format: each part tokenized
    for the whole batch in one call. encode.py joins them in numpy (no per-row Python lists on 100k rows)."""
    n = len(records)
    prompts, answers = [""] * n, [""] * n
    status, errors = [OK] * n, [""] * n
    for i, row in enumerate(records):
        try:
            prompts[i], answers[i] = render_text(fmt.spec, row)
            if not answers[i].strip():
                status[i] = EMPTY
        except RowError as exc:
            status[i], errors[i] = ERROR, str(exc)
    prompt_ids = token_ids(tokenizer, prompts, add_special_tokens=True)
    answer_ids = token_ids(tokenizer, answers, add_special_tokens=False)
    eos = tokenizer.eos_token_id
    if eos is not None:  # the trained stop token: without it the model never learns to end its answer
        answer_ids = [a if a and a[-1] == eos else [*a, eos] for a in answer_ids]
    return prompt_ids, answer_ids, status, errors


def segments(spec: SegmentsSpec, row: dict) -> list[tuple[bool, str]]:
    """(trained, text) of each segment of an input_output row; a malformed row raises RowError."""
    value = row.get(spec.field)
    if not isinstance(value, list) or not value:
        raise RowError(
            f"field '{spec.field}': expected a list of {{text, label}} segments, got {str(value)[:40]!r}"
        )
    out = []
    for k, seg in enumerate(value):
        if not (
            isinstance(seg, dict) and isinstance(seg.get("text"), str) and isinstance(seg.get("label"), bool)
        ):
            raise RowError(
                f"field '{spec.field}[{k}]': expected {{text: string, label: true/false}}, got {str(seg)[:60]!r}"
            )
        out.append((seg["label"], seg["text"]))
    return out


def prompt_and_answer(parts: list[tuple[bool, str]]) -> tuple[list[str], str]:
    """input_output: the texts before the first trained segment (the prompt) and the trained texts after it."""
    first = next((k for k, (label, _) in enumerate(parts) if label), len(parts))
    return [text for _, text in parts[:first]], "".join(text for label, text in parts[first:] if label)


def _encode_segments(fmt: Format, tokenizer, records: list[dict]):
    n = len(records)
    parts: list[list[tuple[bool, str]]] = [[] for _ in range(n)]
    status, errors = [OK] * n, [""] * n
    for i, row in enumerate(records):
        try:
            parts[i] = segments(fmt.spec, row)
        except RowError as exc:
            status[i], errors[i] = ERROR, str(exc)
    # every segment of the batch tokenized in one call, then dealt back to its row in order
    pieces = iter(token_ids(tokenizer, [text for row in parts for _, text in row], False))
    ids, labels, trained = [[] for _ in range(n)], [[] for _ in range(n)], [0] * n
    for i, row in enumerate(parts):
        for label, _ in row:
            piece = next(pieces)
            ids[i] += piece
            labels[i] += piece if label or fmt.train_on_inputs else [IGNORE] * len(piece)
        trained[i] = sum(1 for t in labels[i] if t != IGNORE)
        if status[i] == OK and not trained[i]:
            status[i] = EMPTY
    return ids, labels, trained, status, errors


def token_ids(tokenizer, texts: list[str], add_special_tokens: bool) -> list[list[int]]:
    """Token ids of a batch; fast tokenizers go straight to the Rust backend (no offsets: ~30% faster).

    Same ids as `tokenizer(texts)`: used only while the backend has no padding or truncation set and splits
    special tokens as the tokenizer says.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    if (
        backend is not None
        and hasattr(backend, "encode_batch_fast")
        and backend.truncation is None
        and backend.padding is None
        and backend.encode_special_tokens == bool(getattr(tokenizer, "split_special_tokens", False))
    ):
        return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=add_special_tokens)]
    return tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"]
