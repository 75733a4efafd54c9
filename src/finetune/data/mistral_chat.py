"""tokenizer_use_mistral_common: Mistral's own tokenizer (mistral-common) and its chat format, trained turn by turn.

transformers wraps mistral-common as `MistralCommonBackend`. Unlike a Jinja template it turns a conversation
straight into token ids: control tokens such as [INST] are never read from text, so a prompt is never rendered
to text and tokenized again here. It also validates a conversation for its use: in "finetuning" mode the last
turn must be the assistant's (a training row), in "test" mode the user's (a prompt). The loaded tokenizer is in
test mode (generation uses it, and it is what a run saves); rows are encoded by its finetuning-mode twin.

Masks are found in token space with the idea data/chat.py uses on text: the conversation is encoded again with
one turn's content replaced by a sentinel; the tokens both encodings share at the start and at the end are the
format's own around that turn, so the turn's content is what lies between. Two sentinels whose tokens differ
keep this exact when the content starts or ends with a sentinel's token (a shared token can only lengthen one
encoding's shared part, never shorten it). Exact for any format whose tokens around a turn do not depend on
that turn's content, which holds for mistral-common's (a system prompt moved into the last user turn, as its
older versions do, included); the decoded span is checked against the content all the same. Cost: two more
encodings per located turn.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from finetune.data import chat
from finetune.data.rows import EMPTY, ERROR, IGNORE, OK, Format, RowError
from finetune.errors import UserError

_SENTINELS = ("A", "B")  # one token each, and different tokens, in every Mistral vocabulary


def tokenizer_file(tokenizer) -> Path:
    """The file (tekken.json, tokenizer.model.v*) the wrapper read. transformers keeps its path only in the
    private `_tokenizer_path` (the base class replaces init_kwargs); tests/data/test_mistral_chat.py fails if
    that changes."""
    return Path(tokenizer._tokenizer_path)


def tokenizer_file_digest(tokenizer) -> str:
    """The tokenizer file's sha256: its vocabulary and its version (which decides the chat format)."""
    return hashlib.sha256(tokenizer_file(tokenizer).read_bytes()).hexdigest()


@lru_cache(maxsize=4)
def _finetuning_twin(tokenizer_path: str):
    from transformers import MistralCommonBackend

    return MistralCommonBackend(tokenizer_path=tokenizer_path, mode="finetuning")


def training_tokenizer(tokenizer):
    """The same tokenizer in mistral-common's finetuning mode, which accepts a row ending with the answer."""
    return _finetuning_twin(str(tokenizer_file(tokenizer)))


def encode_conversation(tokenizer, messages: list[dict], field: str = "messages") -> list[int]:
    """The conversation's token ids in mistral-common's format; a conversation it refuses raises RowError."""
    from mistral_common.exceptions import MistralCommonException
    from pydantic import ValidationError

    try:
        return list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False))
    except (MistralCommonException, ValidationError, ValueError) as exc:  # roles out of order, an empty turn
        raise RowError(f"field '{field}': mistral-common refused it ({str(exc).splitlines()[0]})") from None


def encode_prompt(tokenizer, messages: list[dict]) -> list[int]:
    """A prompt (the turns before the answer) as training laid it out, for generation: test mode's encoding."""
    try:
        return encode_conversation(tokenizer, messages)
    except RowError as exc:
        raise UserError(f"row: {exc}") from None


def encode_chat_mistral(fmt: Format, tokenizer, records: list[dict]):
    """encode_chat's result for mistral-common: ids, labels, trained counts, status, errors."""
    spec: chat.ChatSpec = fmt.spec
    training = training_tokenizer(tokenizer)
    n = len(records)
    ids, labels = [[] for _ in range(n)], [[] for _ in range(n)]
    status, errors = [OK] * n, [""] * n
    for i, row in enumerate(records):
        try:
            messages = chat.chat_messages(spec, row)
            row_ids = encode_conversation(training, messages, spec.field_messages)
            spans = _trained_spans(spec, training, messages, row_ids, fmt.train_on_inputs)
        except RowError as exc:
            status[i], errors[i] = ERROR, str(exc)
            continue
        ids[i] = row_ids
        labels[i] = [row_ids[j] if any(s <= j < e for s, e in spans) else IGNORE for j in range(len(row_ids))]
        if not spans:
            status[i] = EMPTY
    trained = [sum(1 for t in row if t != IGNORE) for row in labels]
    return ids, labels, trained, status, errors


def _trained_spans(
    spec: chat.ChatSpec, tokenizer, messages: list[dict], row_ids: list[int], train_all: bool
) -> list[tuple[int, int]]:
    """Token spans to train, by data/chat.py's rules; mistral-common ends an assistant turn with EOS and no
    other turn with one."""

    def end_of_turn(end: int) -> int:
        return int(end < len(row_ids) and row_ids[end] == tokenizer.eos_token_id)

    return chat.spans_to_train(
        spec,
        messages,
        len(row_ids),
        train_all,
        lambda i: _content_span(spec, tokenizer, messages, row_ids, i),
        end_of_turn,
    )


def _content_span(
    spec: chat.ChatSpec, tokenizer, messages: list[dict], row_ids: list[int], i: int
) -> tuple[int, int]:
    """Where message i's content lies in row_ids: between the tokens the row shares, at its start and at its
    end, with the row encoded with that content replaced by each sentinel (the narrowest of the two)."""
    starts, ends = [], []
    for sentinel in _SENTINELS:
        probe = [*messages[:i], {**messages[i], "content": sentinel}, *messages[i + 1 :]]
        other = encode_conversation(tokenizer, probe, spec.field_messages)
        if other == row_ids:  # the content is this sentinel: the other one locates it
            continue
        head = _shared_length(row_ids, other)
        tail = _shared_length(row_ids[::-1], other[::-1], limit=min(len(row_ids), len(other)) - head)
        starts.append(head)
        ends.append(len(row_ids) - tail)
    start, end = min(starts), max(ends)
    if (
        tokenizer.decode(row_ids[start:end], skip_special_tokens=True).strip()
        != messages[i]["content"].strip()
    ):
        raise RowError(
            f"field '{spec.field_messages}[{i}]': mistral-common's tokens around this turn change with its "
            "content, so the turn cannot be located to train it"
        )
    return start, end


def _shared_length(a: list[int], b: list[int], limit: int | None = None) -> int:
    n = min(len(a), len(b)) if limit is None else limit
    k = 0
    while k < n and a[k] == b[k]:
        k += 1
    return k
