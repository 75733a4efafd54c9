"""Unpaired rows (rl: kto): one row -> a prompt, one answer and a boolean label (true = desirable).

The layouts read, as axolotl and TRL write them:

- TRL's standard unpaired format (no `type:`): columns `prompt`, `completion`, `label`. Strings are plain text
  (the prompt as is, the answer right after it); a `prompt` that is a list of messages is a conversation,
  rendered with the run's chat template, and `completion` is then a string, an assistant message or a list
  ending with it.
- axolotl's user-defined KTO dict (`field_prompt`, `field_system`, `field_completion`, `field_label`,
  `prompt_format` with {prompt}/{system}, `completion_format` with {completion}).
- axolotl's named KTO types `chatml.*` / `llama3.*`, rendered with the chat template their prefix names:
  `argilla` reads instruction, `intel` question, `prompt_pairs` and `ultra` prompt (each with an optional
  `system` column); `argilla_chat` reads a `completion` conversation whose last turn is the answer.
- `type: chat_template`: the conversation in field_messages (a string = one user turn), the answer in
  `completion`, the label in `label`.

Prompt and answer are rendered and tokenized exactly as preference_format.py renders a pair's prompt and each
answer (text prompts get the tokenizer's BOS, chat prompts carry the template's; the answer ends with EOS or
its end-of-turn token), so KTO on unpaired rows and on pairs sees the same token layout.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from finetune.config import KTO_TYPES, Config, DatasetConfig, PreferenceType, UnpairedType
from finetune.data import preference_format
from finetune.data.chat import ChatSpec, chat_messages, chat_spec, render_chat
from finetune.data.formats import RowError, text_value, token_ids
from finetune.errors import UserError

# axolotl's KTO strategy name -> the column holding the user's turn (argilla_chat: none, see above)
PROMPT_COLUMN = {"argilla": "instruction", "intel": "question", "prompt_pairs": "prompt", "ultra": "prompt"}
OK, EMPTY, ERROR = preference_format.OK, preference_format.EMPTY, preference_format.ERROR


@dataclass(frozen=True)
class UnpairedSpec:
    """How to read one dataset entry's unpaired rows."""

    text: UnpairedType | None  # the text layout of string rows (None: every row is a conversation)
    chat: ChatSpec | None  # the template of conversation rows (None: the tokenizer has none)
    field_prompt: str = "prompt"  # the user's turn, or the conversation before the answer
    field_system: str | None = None  # a system column prepended as a system turn (axolotl's named types)
    field_completion: str = "completion"
    field_label: str = "label"
    history_in_completion: bool = False  # argilla_chat: the completion column is the whole conversation


def is_unpaired_type(ds: DatasetConfig) -> bool:
    """Entries whose `type:` says unpaired rows (others can still hold them: reads_unpaired looks at columns)."""
    return isinstance(ds.type, UnpairedType) or ds.type in KTO_TYPES


def reads_unpaired(ds: DatasetConfig, columns: list[str]) -> bool:
    """Whether a source of this entry holds unpaired rows: its type says so, or (no `type:` / chat_template
    without field_chosen) its columns have a completion or a label and no chosen/rejected."""
    if is_unpaired_type(ds):
        return True
    default = isinstance(ds.type, PreferenceType) and ds.type == PreferenceType()
    chat = ds.type == "chat_template" and ds.field_chosen is None and ds.field_rejected is None
    if not (default or chat):
        return False
    return not {"chosen", "rejected"} & set(columns) and bool({"completion", "label"} & set(columns))


def unpaired_spec(cfg: Config, ds: DatasetConfig, where: str, tokenizer) -> UnpairedSpec:
    """The UnpairedSpec of one dataset entry; a bad template raises UserError naming its key path."""
    if isinstance(ds.type, UnpairedType):
        t = ds.type
        preference_format.check_templates(
            t, where, {"prompt_format": ("prompt", "system"), "completion_format": ("completion",)}
        )
        return UnpairedSpec(text=t, chat=None, field_completion=t.field_completion, field_label=t.field_label)
    if ds.type in KTO_TYPES:  # axolotl's named types: the template their prefix names
        from finetune.data.tokenizer import resolve_chat_template

        template, strategy = ds.type.split(".")
        resolve_chat_template(
            template, None, tokenizer, f"{where}.type"
        )  # one line if the tokenizer lacks it
        chat = chat_spec(cfg, ds.model_copy(update={"chat_template": template}), where, tokenizer)
        if strategy == "argilla_chat":
            return UnpairedSpec(text=None, chat=replace(chat, field_messages="completion"), history_in_completion=True)  # fmt: skip
        field = PROMPT_COLUMN[strategy]
        return UnpairedSpec(text=None, chat=replace(chat, field_messages=field), field_prompt=field, field_system="system")  # fmt: skip
    if ds.type == "chat_template":
        chat = chat_spec(cfg, ds, where, tokenizer)
        return UnpairedSpec(text=None, chat=chat, field_prompt=ds.field_messages)
    # TRL's standard format: strings as text, message lists with the run's template (when it has one)
    template = bool(getattr(tokenizer, "chat_template", None)) or ds.chat_template
    chat = replace(chat_spec(cfg, ds, where, tokenizer), field_messages="prompt") if template else None
    return UnpairedSpec(text=UnpairedType(), chat=chat)


# ---------------------------------------------------------------- rendering one row


def label_value(row: dict, field: str) -> bool:
    """The row's label: true/false (JSON booleans, or the strings true/false in any case)."""
    value = row.get(field)
    if value is None:
        raise RowError(
            f"missing field '{field}' (unpaired rows need a label: true = desirable, false = undesirable)"
        )
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise RowError(f"field '{field}': expected true or false, got {value!r} ({type(value).__name__})")


def render_prompt(spec: UnpairedSpec, row: dict, tokenizer) -> tuple[str, list[dict] | None]:
    """(prompt text, the conversation before the answer, or None for a text prompt)."""
    if spec.history_in_completion:
        turns = chat_messages(spec.chat, row)  # spec.chat.field_messages is the completion column
        if len(turns) < 2:
            raise RowError(
                f"field '{spec.field_completion}': expected the conversation and the answer as its last turn, got {len(turns)} message(s)"
            )
        messages = turns[:-1]
    elif spec.chat is not None and (spec.text is None or isinstance(row.get(spec.field_prompt), list)):
        messages = preference_format.prompt_messages(spec.chat, row)
        system = text_value(row, spec.field_system, required=False) if spec.field_system else ""
        if system.strip() and not (messages and messages[0]["role"] == "system"):
            messages = [{"role": "system", "content": system}, *messages]
    elif spec.text is not None:
        if isinstance(row.get(spec.field_prompt), list):
            raise RowError(
                f"field '{spec.field_prompt}': a list of messages needs a chat template, and the tokenizer has none: set chat_template"
            )
        t = spec.text
        system = text_value(row, t.field_system, required=False) if "{system}" in t.prompt_format else ""
        return t.prompt_format.format(prompt=text_value(row, t.field_prompt), system=system), None
    return render_chat(spec.chat, tokenizer, messages, add_generation_prompt=True), messages


def render_row(spec: UnpairedSpec, row: dict, tokenizer) -> tuple[str, str, bool, bool]:
    """(prompt, answer, label, whether the row is a conversation); RowError names the field at fault."""
    label = label_value(row, spec.field_label)
    prompt, messages = render_prompt(spec, row, tokenizer)
    if messages is None:
        t = spec.text
        return (
            prompt,
            t.completion_format.format(completion=text_value(row, t.field_completion)),
            label,
            False,
        )
    answer = preference_format.answer_message(spec.chat, row, spec.field_completion)
    completion = preference_format.chat_answer(
        spec.chat, tokenizer, messages, prompt, answer, spec.field_completion
    )
    return prompt, completion, label, True


# ---------------------------------------------------------------- tokenizing a batch


def encode_rows(spec: UnpairedSpec, tokenizer, records: list[dict]) -> dict[str, list]:
    """prompt_ids, completion_ids, label, status (OK/EMPTY/ERROR) and error text of each row."""
    n = len(records)
    prompts, completions, labels, chat = [""] * n, [""] * n, [False] * n, [False] * n
    status, errors = [OK] * n, [""] * n
    for i, row in enumerate(records):
        try:
            prompts[i], completions[i], labels[i], chat[i] = render_row(spec, row, tokenizer)
            if not completions[i].strip():
                status[i] = EMPTY
        except RowError as exc:
            status[i], errors[i] = ERROR, str(exc)
    prompt_ids: list[list[int]] = [[] for _ in range(n)]
    for is_chat in (False, True):  # text prompts get the tokenizer's BOS; chat templates carry theirs
        rows = [i for i in range(n) if chat[i] == is_chat and status[i] == OK]
        for i, ids in zip(rows, token_ids(tokenizer, [prompts[i] for i in rows], not is_chat), strict=True):
            prompt_ids[i] = ids
    enders = {
        False: preference_format.turn_enders(None, tokenizer),
        True: preference_format.turn_enders(spec.chat, tokenizer),
    }
    answers = token_ids(tokenizer, completions, add_special_tokens=False)
    completion_ids = [
        preference_format.ended(ids, enders[chat[i]], tokenizer) if status[i] == OK else []
        for i, ids in enumerate(answers)
    ]
    return {
        "prompt_ids": prompt_ids,
        "completion_ids": completion_ids,
        "label": labels,
        "status": status,
        "error": errors,
    }


def format_prompt(cfg: Config, ds: DatasetConfig, row: dict, tokenizer) -> str:
    """The prompt text of an unpaired row exactly as training laid it out (the answer left out)."""
    spec = unpaired_spec(cfg, ds, "dataset", tokenizer)
    try:
        return render_prompt(spec, row, tokenizer)[0]
    except RowError as exc:
        raise UserError(f"row: {exc}") from None


def own_layout(ds: DatasetConfig, row: dict) -> bool:
    """Whether a row's prompt is laid out here rather than as a pair's prompt (preference_format.py)."""
    return is_unpaired_type(ds) or (ds.type != "chat_template" and is_chat(ds, row))


def is_chat(ds: DatasetConfig, row: dict | None = None) -> bool:
    """Whether the entry's prompts (this row's, in TRL's format) are chat renderings, tokenized without
    special tokens: chat_template, axolotl's chatml.* / llama3.* KTO types, or a TRL row whose prompt is
    a list of messages."""
    if ds.type in KTO_TYPES or ds.type == "chat_template":
        return True
    default = isinstance(ds.type, PreferenceType) and ds.type == PreferenceType()
    return default and row is not None and isinstance(row.get("prompt"), list)
