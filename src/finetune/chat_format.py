"""The chat_template format: conversations rendered by the chat template, trained turn by turn.

The conversation is rendered once with the template (which carries its own BOS, so no special tokens are
added at tokenization). The content of each turn whose role is in roles_to_train, plus the end-of-turn
token right after it (train_on_eos), is trained. Turns are found by searching each message's content in the
rendered text, in order, so templates without `{% generation %}` markers (axolotl's llama3, chatml, a
user's Jinja string) mask the same way as those with them; a token straddling the boundary between the
template's text and the content (" Hello" after "assistant:") is trained.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from finetune.config import Config, DatasetConfig
from finetune.errors import UserError
from finetune.formats import EMPTY, ERROR, IGNORE, OK, Format, RowError, text_value

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
        roles_to_train=tuple(roles.get(r, r) for r in ds.roles_to_train or ("assistant",)),
        train_on_eos=ds.train_on_eos or "turn",
        drop_system_message=bool(ds.drop_system_message),
        template=template,
        eot_tokens=eots,
    )


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
