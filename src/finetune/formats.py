"""Prompt formats: one row -> the text the model sees, split into a masked prompt and a trained answer.

Each `type:` of a dataset entry becomes a `Format` once (`build_format`), then rows go through
`encode_batch` in batches (the same code runs in worker processes). The token layout follows axolotl so
existing configs train on the same tokens:

- custom dict / `alpaca`: prompt = system_format.format(system) + format.format(instruction, input), tokenized
  with the tokenizer's special tokens (BOS); the answer is tokenized on its own, without special tokens, and
  EOS is appended. Prompt labels are -100 unless train_on_inputs.
- `completion`: the text is the answer (BOS masked, EOS appended and trained).
- `chat_template`: the conversation is rendered once with the template (which carries its own BOS, so no
  special tokens are added), and the tokens of the content of each turn in roles_to_train, plus the
  end-of-turn token after it (train_on_eos), are trained. Turns are located by searching each message's
  content in the rendered text, in order, so templates without `{% generation %}` markers work too.

A row never raises: it gets a status (ok, empty answer, error) and an error text, so the caller can report
the first bad row by file and line after a multi-process map, without writing anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from finetune.config import Config, DatasetConfig, DatasetType
from finetune.errors import UserError

IGNORE = -100
OK, EMPTY, ERROR = 0, 1, 2

ALPACA_SYSTEM = "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request."
ALPACA_SYSTEM_NO_INPUT = "Below is an instruction that describes a task. Write a response that appropriately completes the request."

# Row role names mapped to the roles chat templates know (axolotl's defaults, ShareGPT included).
DEFAULT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "model": "assistant",
    "bot": "assistant",
    "assistant": "assistant",
    "system": "system",
    "tool": "tool",
}
# End-of-turn markers of common templates; the one right after an assistant turn is its trained stop token.
KNOWN_EOT = (
    "<|eot_id|>",
    "<|im_end|>",
    "<end_of_turn>",
    "<|end|>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "</s>",
    "<eos>",
)


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
class ChatSpec:
    """A chat_template format: where the turns are and which of them are trained."""

    field_messages: str
    role_key: str
    content_key: str
    roles: dict[str, str]
    roles_to_train: tuple[str, ...]
    train_on_eos: str
    drop_system_message: bool
    template: str | None  # None: the tokenizer's own (set by load_tokenizer)
    eot_tokens: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class Format:
    spec: TextSpec | ChatSpec
    train_on_inputs: bool
    sequence_len: int
    truncate: bool


def build_format(cfg: Config, ds: DatasetConfig, where: str, tokenizer) -> Format:
    """The Format of one dataset entry; a bad template or mapping raises UserError naming `where` (key path)."""
    t = ds.type
    if isinstance(t, DatasetType):
        spec: TextSpec | ChatSpec = TextSpec(
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
    elif t == "alpaca":
        spec = TextSpec(
            field_instruction="instruction",
            field_output="output",
            field_input="input",
            system_prompt=ALPACA_SYSTEM,
            system_prompt_no_input=ALPACA_SYSTEM_NO_INPUT,
            format="### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n",
            no_input_format="### Instruction:\n{instruction}\n\n### Response:\n",
            system_format="{system}\n\n",
        )
    elif t == "completion":
        spec = TextSpec(field_instruction=ds.field or "text", field_output=None)
    else:
        spec = _chat_spec(cfg, ds, where, tokenizer)
    return Format(spec, cfg.train_on_inputs, cfg.sequence_len, cfg.excess_length_strategy == "truncate")


def _check_placeholders(template: str | None, key: str, where: str) -> None:
    if template is None:
        return
    try:
        template.format(instruction="", input="", system="")
    except (KeyError, IndexError, ValueError) as exc:
        raise UserError(
            f"{where}.{key}: bad template {template!r} ({exc.__class__.__name__}: {exc}); use {{instruction}}, {{input}} and {{system}}, and double literal braces"
        ) from None


def _chat_spec(cfg: Config, ds: DatasetConfig, where: str, tokenizer) -> ChatSpec:
    from finetune.tokenizer import resolve_chat_template

    mapping = dict(ds.message_property_mappings or {})
    mapping.setdefault("role", ds.message_field_role or "role")
    mapping.setdefault("content", ds.message_field_content or "content")
    roles = dict(DEFAULT_ROLES)
    for target, sources in (ds.roles or {}).items():
        roles.update({source: target for source in sources})
    template = (
        resolve_chat_template(ds.chat_template, cfg.chat_template_jinja, tokenizer, f"{where}.chat_template")
        if ds.chat_template
        else None
    )
    if template is None and not getattr(tokenizer, "chat_template", None):
        raise UserError(
            f"{where}.type: chat_template needs a template, but the tokenizer has none: set chat_template: llama3 (or chatml, or a Jinja string)"
        )
    eots = tuple(cfg.eot_tokens or ())
    if not eots:
        vocab = tokenizer.get_vocab()
        eots = tuple(dict.fromkeys(t for t in (tokenizer.eos_token, *KNOWN_EOT) if t and t in vocab))
    return ChatSpec(
        field_messages=ds.field_messages,
        role_key=mapping["role"],
        content_key=mapping["content"],
        roles=roles,
        roles_to_train=tuple(ds.roles_to_train or ("assistant",)),
        train_on_eos=ds.train_on_eos or "turn",
        drop_system_message=bool(ds.drop_system_message),
        template=template,
        eot_tokens=eots,
    )


# ---------------------------------------------------------------- rendering (shared with generation)


class RowError(ValueError):
    """A problem with one row: the message names the field; the caller adds file and line."""


def _text(row: dict, key: str, required: bool = True) -> str:
    value = row.get(key)
    if value is None:
        if required:
            raise RowError(f"missing field '{key}'")
        return ""
    if not isinstance(value, str):
        raise RowError(f"field '{key}': expected a string, got {type(value).__name__} {str(value)[:40]!r}")
    return value


def render_text(spec: TextSpec, row: dict) -> tuple[str, str]:
    """(prompt, answer) of a text-format row, exactly as training lays them out."""
    if spec.field_output is None:
        return "", _text(row, spec.field_instruction)
    instruction = _text(row, spec.field_instruction)
    answer = _text(row, spec.field_output)
    text_input = _text(row, spec.field_input, required=False) if spec.field_input else ""
    system = _text(row, spec.field_system, required=False) if spec.field_system else ""
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


def chat_messages(spec: ChatSpec, row: dict) -> list[dict]:
    """The row's turns as [{role, content}] with roles mapped to the template's names."""
    turns = row.get(spec.field_messages)
    if turns is None:
        raise RowError(f"missing field '{spec.field_messages}'")
    if not isinstance(turns, list):
        raise RowError(
            f"field '{spec.field_messages}': expected a list of messages, got {type(turns).__name__}"
        )
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise RowError(
                f"field '{spec.field_messages}[{i}]': expected a mapping, got {type(turn).__name__}"
            )
        role = _text(turn, spec.role_key) if turn.get(spec.role_key) is not None else None
        if role is None:
            raise RowError(f"field '{spec.field_messages}[{i}].{spec.role_key}' is missing")
        try:
            content = _text(turn, spec.content_key)
        except RowError as exc:
            raise RowError(
                f"field '{spec.field_messages}[{i}].{spec.content_key}': {str(exc).split(': ', 1)[-1]}"
            ) from None
        role = spec.roles.get(role, role)
        if role == "system" and spec.drop_system_message:
            continue
        messages.append({"role": role, "content": content})
    return messages


def render_chat(spec: ChatSpec, tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    try:
        return tokenizer.apply_chat_template(
            messages, chat_template=spec.template, tokenize=False, add_generation_prompt=add_generation_prompt
        )
    except Exception as exc:  # jinja raises its own errors (e.g. "roles must alternate"): a data problem
        raise RowError(
            f"field '{spec.field_messages}': the chat template refused it ({str(exc).splitlines()[0]})"
        ) from None


# ---------------------------------------------------------------- tokenizing batches


def encode_batch(fmt: Format, tokenizer, rows: dict[str, list]) -> dict[str, list]:
    """Tokenize a batch (column -> values): input_ids, labels, trained (count), status (OK/EMPTY/ERROR), error, truncated."""
    n = len(next(iter(rows.values()))) if rows else 0
    records = [{k: v[i] for k, v in rows.items()} for i in range(n)]
    encode = _encode_chat if isinstance(fmt.spec, ChatSpec) else _encode_text
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
    ids, labels, trained = [], [], []
    for p, a in zip(prompt_ids, answer_ids, strict=True):
        if eos is not None and (not a or a[-1] != eos):
            a = [*a, eos]  # the trained stop token: without it the model never learns to end its answer
        ids.append(p + a)
        labels.append(p + a if fmt.train_on_inputs else [IGNORE] * len(p) + a)
        trained.append(len(p) + len(a) if fmt.train_on_inputs else len(a))
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


def _encode_chat(fmt: Format, tokenizer, records: list[dict]):
    spec: ChatSpec = fmt.spec
    n = len(records)
    texts, spans, status, errors = [""] * n, [[] for _ in range(n)], [OK] * n, [""] * n
    for i, row in enumerate(records):
        try:
            messages = chat_messages(spec, row)
            texts[i] = render_chat(spec, tokenizer, messages)
            spans[i] = _trained_spans(spec, messages, texts[i], fmt.train_on_inputs)
            if not spans[i]:
                status[i] = EMPTY
        except RowError as exc:
            status[i], errors[i] = ERROR, str(exc)
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    ids, labels = enc["input_ids"], []
    for row_ids, offsets, row_spans in zip(ids, enc["offset_mapping"], spans, strict=True):
        labels.append(_label_tokens(row_ids, offsets, row_spans))
    trained = [sum(1 for t in row if t != IGNORE) for row in labels]
    return ids, labels, trained, status, errors


def _trained_spans(spec: ChatSpec, messages: list[dict], text: str, train_all: bool) -> list[tuple[int, int]]:
    """Character spans of `text` to train: content of trained turns (+ their end-of-turn token)."""
    if train_all:
        return [(0, len(text))] if any(m["content"].strip() for m in messages) else []
    spans, cursor = [], 0
    trained_turns = [
        i for i, m in enumerate(messages) if m["role"] in spec.roles_to_train and m["content"].strip()
    ]
    for i, message in enumerate(messages):
        content = message["content"].strip()
        if not content:
            continue
        start = text.find(content, cursor)
        if start < 0:
            raise RowError(
                f"field '{spec.field_messages}[{i}]': its content is not in the rendered chat template (the template rewrites it)"
            )
        end = cursor = start + len(content)
        trained = i in trained_turns
        if trained:
            spans.append((start, end))
        eot = next((t for t in spec.eot_tokens if text.startswith(t, end)), None)
        if eot and (
            spec.train_on_eos == "all"
            or (
                trained
                and (spec.train_on_eos == "turn" or (spec.train_on_eos == "last" and i == trained_turns[-1]))
            )
        ):
            spans.append((end, end + len(eot)))
        if eot:
            cursor = end + len(eot)
    return spans if trained_turns else []


def _label_tokens(ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int]:
    """A token is trained when its characters overlap a trained span (spans are sorted and disjoint)."""
    labels, k = [IGNORE] * len(ids), 0
    for j, (s, e) in enumerate(offsets):
        while k < len(spans) and spans[k][1] <= s:
            k += 1
        if k < len(spans) and s < spans[k][1] and e > spans[k][0]:
            labels[j] = ids[j]
    return labels
