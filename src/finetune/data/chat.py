"""The chat_template format: conversations rendered by the chat template, trained turn by turn.

The conversation is rendered once with the template (which carries its own BOS, so no special tokens are
added at tokenization). The content of each turn whose role is in roles_to_train, plus the end-of-turn
token right after it (train_on_eos), is trained; a template's own text (headers, a default system prompt)
never is. Each turn is located from the template itself, not by searching its text: the conversation is
rendered again with that turn's content replaced by a sentinel, and the text before and after the sentinel
is the template's text around the turn, so the content is what lies between them in the real rendering.
This is exact for any template whose text around a turn does not depend on that turn's content, even when
the content also occurs in the markup ("art" in `<|start_header_id|>`), and needs no `{% generation %}`
markers; the trained text is the content as rendered (llama3 and gemma `trim` it: content.strip()). A
template whose text around a turn changes with that turn's content (one that rewrites reasoning tags, say)
cannot be located so: the row gets a RowError. Cost: one more rendering per located turn (the trained
ones; every non-blank one with train_on_eos: all). A token straddling the boundary between the template's
text and the content (" Hello" after "assistant:") is trained.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from finetune.config import Config, DatasetConfig
from finetune.data.rows import EMPTY, ERROR, IGNORE, OK, Format, RowError, text_value
from finetune.data.tokenizer import is_mistral_common, resolve_chat_template
from finetune.errors import UserError

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


def chat_spec(cfg: Config, ds: DatasetConfig, where: str, tokenizer) -> ChatSpec:
    """The ChatSpec of a `type: chat_template` entry (axolotl's keys and defaults)."""
    mapping = dict(ds.message_property_mappings or {})
    mapping.setdefault("role", ds.message_field_role or "role")
    mapping.setdefault("content", ds.message_field_content or "content")
    roles = dict(DEFAULT_ROLES)
    for target, sources in (ds.roles or {}).items():
        roles.update({source: target for source in sources})
    if is_mistral_common(tokenizer):  # its own format (data/mistral_chat.py): no template, EOS ends a turn
        template, eots = None, (tokenizer.eos_token,)
    else:
        template, eots = _template_and_eots(cfg, ds, where, tokenizer)
    return ChatSpec(
        field_messages=ds.field_messages,
        role_key=mapping["role"],
        content_key=mapping["content"],
        roles=roles,
        roles_to_train=tuple(roles.get(r, r) for r in ds.roles_to_train or ("assistant",)),
        train_on_eos=ds.train_on_eos or "turn",
        drop_system_message=bool(ds.drop_system_message),
        template=template,
        eot_tokens=eots,
    )


def _template_and_eots(cfg: Config, ds: DatasetConfig, where: str, tokenizer) -> tuple[str | None, tuple]:
    """The entry's own template (None: the tokenizer's) and the end-of-turn tokens it trains."""
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
    return template, eots


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
        where = f"{spec.field_messages}[{i}]"
        role = text_value(turn, spec.role_key, name=f"{where}.{spec.role_key}")
        content = text_value(turn, spec.content_key, name=f"{where}.{spec.content_key}")
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


def encode_chat(fmt: Format, tokenizer, records: list[dict]):
    spec: ChatSpec = fmt.spec
    n = len(records)
    texts, spans, status, errors = [""] * n, [[] for _ in range(n)], [OK] * n, [""] * n
    for i, row in enumerate(records):
        try:
            messages = chat_messages(spec, row)
            texts[i] = render_chat(spec, tokenizer, messages)
            spans[i] = _trained_spans(spec, tokenizer, messages, texts[i], fmt.train_on_inputs)
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


def _trained_spans(
    spec: ChatSpec, tokenizer, messages: list[dict], text: str, train_all: bool
) -> list[tuple[int, int]]:
    """Character spans of `text` to train: content of trained turns (+ their end-of-turn token)."""
    sentinel = _sentinel(text)

    def end_of_turn(end: int) -> int:
        return len(max((t for t in spec.eot_tokens if text.startswith(t, end)), key=len, default=""))

    return spans_to_train(
        spec,
        messages,
        len(text),
        train_all,
        lambda i: _content_span(spec, tokenizer, messages, text, i, sentinel),
        end_of_turn,
    )


def spans_to_train(spec: ChatSpec, messages: list[dict], whole: int, train_all: bool, locate, end_of_turn):
    """The spans (of characters, or of tokens: data/mistral_chat.py) to train, as roles_to_train and
    train_on_eos say: the content of each trained turn, and the end-of-turn marker right after a turn.
    `locate(i)` is message i's content span; `end_of_turn(end)` the length of the marker at `end` (0: none).

    A turn whose content is empty or whitespace-only trains nothing, not even its end-of-turn token."""
    if train_all:
        return [(0, whole)] if any(m["content"].strip() for m in messages) else []
    trained_turns = [
        i for i, m in enumerate(messages) if m["role"] in spec.roles_to_train and m["content"].strip()
    ]
    if not trained_turns:
        return []
    spans, trained_set = [], set(trained_turns)
    for i, message in enumerate(messages):
        trained = i in trained_set
        if not message["content"].strip() or not (trained or spec.train_on_eos == "all"):
            continue
        start, end = locate(i)
        if trained and end > start:
            spans.append((start, end))
        marker = end_of_turn(end)
        if marker and (
            spec.train_on_eos == "all"
            or (
                trained
                and (spec.train_on_eos == "turn" or (spec.train_on_eos == "last" and i == trained_turns[-1]))
            )
        ):
            spans.append((end, end + marker))
    return merged_spans(spans)


# Private-use characters: no template trims, escapes or changes the case of them, and data rarely has them.
_SENTINEL = "\ue000\ue001"


def _sentinel(text: str) -> str:
    sentinel = _SENTINEL
    while sentinel in text:
        sentinel += "\ue001"
    return sentinel


def _content_span(
    spec: ChatSpec, tokenizer, messages: list[dict], text: str, i: int, sentinel: str
) -> tuple[int, int]:
    """Where message i's content lies in `text`, its rendering: the conversation is rendered with that content
    replaced by `sentinel` (absent from `text`), and what the template writes before and after the sentinel
    must be what `text` starts and ends with; the content as rendered is what lies between."""
    probe = [*messages[:i], {**messages[i], "content": sentinel}, *messages[i + 1 :]]
    marked = render_chat(spec, tokenizer, probe)
    at = marked.find(sentinel)
    before, after = marked[:at], marked[at + len(sentinel) :]
    if (
        at < 0
        or sentinel in after
        or len(before) + len(after) > len(text)
        or not text.startswith(before)
        or not text.endswith(after)
    ):
        raise RowError(
            f"field '{spec.field_messages}[{i}]': the chat template's text around this turn changes with its content (it rewrites the content), so the turn cannot be located to train it"
        )
    return len(before), len(text) - len(after)


def merged_spans(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Spans sorted, with touching or overlapping ones joined (as _label_tokens needs them)."""
    out: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def _label_tokens(ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int]:
    """A token is trained when its characters overlap a trained span (spans are sorted and disjoint)."""
    labels, k = [IGNORE] * len(ids), 0
    for j, (s, e) in enumerate(offsets):
        while k < len(spans) and spans[k][1] <= s:
            k += 1
        if k < len(spans) and s < spans[k][1] and e > spans[k][0]:
            labels[j] = ids[j]
    return labels
