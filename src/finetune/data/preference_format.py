"""Preference rows (rl: dpo, reward_model): one row -> a prompt and two answers, the chosen and the rejected.

Two row formats, read as axolotl reads them:

- user-defined (a `type:` dict, or no `type:` at all = the prompt/chosen/rejected columns): the prompt is
  `prompt_format.format(prompt=row[field_prompt], system=row[field_system])`, each answer its own format.
- `chat_template` with `field_messages` (the conversation before the answer, or a string = one user turn) and
  `field_chosen` / `field_rejected` (a string, an assistant message, or a list of messages ending with it): the
  prompt is the template's rendering with the generation prompt, and each answer is exactly what the template
  adds after it once the answer turn is appended (content + end-of-turn token).

The token layout is SFT's (formats.py), so DPO after SFT sees the prompts it was trained on: the prompt is
tokenized on its own (text formats add the tokenizer's BOS; chat templates carry theirs), each answer on its
own without special tokens, and EOS is appended unless the answer already ends its turn. Tokenizing the pieces
apart is deliberate: TRL's own tokenizer joins prompt + answer, so a prompt ending in a space merges it into
the answer's first token, and its common-prefix split cuts "neutral"/"negative" into "ne" + ... (FACTS.md).
Building the tables, lengths and caching: preference.py (with answer_rows.py, shared with KTO).
"""

from __future__ import annotations

from dataclasses import dataclass

from finetune.config import Config, DatasetConfig, PreferenceType
from finetune.data.chat import ChatSpec, chat_messages, chat_spec, render_chat
from finetune.data.formats import RowError, text_value, token_ids
from finetune.errors import UserError


@dataclass(frozen=True)
class PairSpec:
    """How to read one dataset entry's preference rows: a user-defined text format or a chat template."""

    text: PreferenceType | None  # user-defined format (None: chat)
    chat: ChatSpec | None = None
    field_chosen: str = "chosen"
    field_rejected: str = "rejected"


def check_templates(t, where: str, keys: dict[str, tuple[str, ...]]) -> None:
    """Each `key` of a custom type must format with its `names`; a bad one is a UserError naming its path."""
    for key, names in keys.items():
        try:
            getattr(t, key).format(**dict.fromkeys(names, ""))
        except (KeyError, IndexError, ValueError) as exc:
            allowed = " and ".join(f"{{{n}}}" for n in names)
            raise UserError(
                f"{where}.type.{key}: bad template {getattr(t, key)!r} ({exc.__class__.__name__}: {exc}); use {allowed}, and double literal braces"
            ) from None


def pair_spec(cfg: Config, ds: DatasetConfig, where: str, tokenizer) -> PairSpec:
    """The PairSpec of one dataset entry; a bad template raises UserError naming its key path."""
    if isinstance(ds.type, PreferenceType):
        t = ds.type
        check_templates(t, where, {"prompt_format": ("prompt", "system"), "chosen_format": ("chosen",),
                                   "rejected_format": ("rejected",)})  # fmt: skip
        return PairSpec(text=t, field_chosen=t.field_chosen, field_rejected=t.field_rejected)
    return PairSpec(
        text=None,
        chat=chat_spec(cfg, ds, where, tokenizer),
        field_chosen=ds.field_chosen or "chosen",
        field_rejected=ds.field_rejected or "rejected",
    )


# ---------------------------------------------------------------- rendering one row


def render_pair(spec: PairSpec, row: dict, tokenizer) -> tuple[str, str, str]:
    """(prompt, chosen, rejected) texts of a row; RowError names the field at fault."""
    if spec.text is not None:
        t = spec.text
        system = text_value(row, t.field_system, required=False) if "{system}" in t.prompt_format else ""
        prompt = t.prompt_format.format(prompt=text_value(row, t.field_prompt), system=system)
        chosen = t.chosen_format.format(chosen=text_value(row, t.field_chosen))
        rejected = t.rejected_format.format(rejected=text_value(row, t.field_rejected))
        return prompt, chosen, rejected
    messages = prompt_messages(spec.chat, row)
    prompt = render_chat(spec.chat, tokenizer, messages, add_generation_prompt=True)
    answers = [
        chat_answer(spec.chat, tokenizer, messages, prompt, answer_message(spec.chat, row, field), field)
        for field in (spec.field_chosen, spec.field_rejected)
    ]
    return prompt, answers[0], answers[1]


def chat_answer(
    spec: ChatSpec, tokenizer, messages: list[dict], prompt: str, answer: dict, field: str
) -> str:
    """What the template adds after `prompt` once `answer` is appended: its content and end-of-turn token
    ("" for a blank answer). Shared with unpaired KTO rows (unpaired_format.py)."""
    if not answer["content"].strip():
        return ""
    full = render_chat(spec, tokenizer, [*messages, answer])
    if not full.startswith(prompt):
        raise RowError(
            f"field '{field}': the chat template renders the conversation differently once the answer is added, so the prompt cannot be split from the answer"
        )
    # the answer runs up to its end-of-turn token; newlines after it are the template's layout
    return full[len(prompt) :].rstrip()


def prompt_messages(spec: ChatSpec, row: dict) -> list[dict]:
    """The conversation before the answers; a plain string is one user turn (as axolotl reads it). A last,
    empty assistant turn is the answer's place (generation asks that way), not part of the prompt."""
    turns = row.get(spec.field_messages)
    if isinstance(turns, str):
        return [{"role": "user", "content": turns}]
    messages = chat_messages(spec, row)
    while messages and messages[-1]["role"] == "assistant" and not messages[-1]["content"].strip():
        messages.pop()
    return messages


def answer_message(spec: ChatSpec, row: dict, field: str) -> dict:
    value = row.get(field)
    if value is None:
        raise RowError(f"missing field '{field}'")
    if isinstance(value, str):
        return {"role": "assistant", "content": value}
    if isinstance(value, list):
        if not value:
            raise RowError(f"field '{field}': an empty list of messages")
        value = value[-1]
    if not isinstance(value, dict):
        raise RowError(
            f"field '{field}': expected a string, a message or a list of messages, got {type(value).__name__}"
        )
    role = text_value(value, spec.role_key, name=f"{field}.{spec.role_key}")
    content = text_value(value, spec.content_key, name=f"{field}.{spec.content_key}")
    return {"role": spec.roles.get(role, role), "content": content}


# ---------------------------------------------------------------- tokenizing a batch

OK, EMPTY, SAME, ERROR = 0, 1, 2, 3


def encode_pairs(spec: PairSpec, tokenizer, records: list[dict]) -> dict[str, list]:
    """prompt_ids, chosen_ids, rejected_ids, status (OK/EMPTY/SAME/ERROR) and error text of each row."""
    n = len(records)
    prompts, chosen, rejected = [""] * n, [""] * n, [""] * n
    status, errors = [OK] * n, [""] * n
    for i, row in enumerate(records):
        try:
            prompts[i], chosen[i], rejected[i] = render_pair(spec, row, tokenizer)
            if not chosen[i].strip() or not rejected[i].strip():
                status[i] = EMPTY
            elif chosen[i] == rejected[i]:
                status[i] = SAME
        except RowError as exc:
            status[i], errors[i] = ERROR, str(exc)
    chat = spec.chat is not None
    prompt_ids = token_ids(tokenizer, prompts, add_special_tokens=not chat)
    enders = _turn_enders(spec, tokenizer)
    chosen_ids = [ended(a, enders, tokenizer) for a in token_ids(tokenizer, chosen, add_special_tokens=False)]
    rejected_ids = [
        ended(a, enders, tokenizer) for a in token_ids(tokenizer, rejected, add_special_tokens=False)
    ]
    for i in range(n):
        if status[i] != OK:
            prompt_ids[i], chosen_ids[i], rejected_ids[i] = [], [], []
    return {
        "prompt_ids": prompt_ids,
        "chosen_ids": chosen_ids,
        "rejected_ids": rejected_ids,
        "status": status,
        "error": errors,
    }


def _turn_enders(spec: PairSpec, tokenizer) -> set[int]:
    return turn_enders(spec.chat, tokenizer)


def turn_enders(chat: ChatSpec | None, tokenizer) -> set[int]:
    """Token ids that already end an answer: EOS, and for chat templates their end-of-turn tokens."""
    vocab = tokenizer.get_vocab()
    names = [tokenizer.eos_token, *(chat.eot_tokens if chat else ())]
    return {vocab[t] for t in names if t and t in vocab}


def keep_end(ids: list[int], n: int, bos: int | None) -> list[int]:
    """max_prompt_len: the last n tokens; a leading BOS stays in front (the model never saw a prompt without it)."""
    if bos is not None and ids[0] == bos and n > 1:
        return [bos, *ids[len(ids) - n + 1 :]]
    return ids[-n:]


def ended(ids: list[int], enders: set[int], tokenizer) -> list[int]:
    """EOS appended unless the answer already ends with it (or with its chat turn's end token)."""
    eos = tokenizer.eos_token_id
    if eos is None or (ids and ids[-1] in enders):
        return ids
    return [*ids, eos]


# ---------------------------------------------------------------- prompts for generation and cards


def format_prompt(cfg: Config, ds: DatasetConfig, row: dict, tokenizer) -> str:
    """The prompt text of a preference row exactly as training laid it out (answers left out)."""
    spec = pair_spec(cfg, ds, "dataset", tokenizer)
    try:
        if spec.text is not None:
            t = spec.text
            system = text_value(row, t.field_system, required=False) if "{system}" in t.prompt_format else ""
            return t.prompt_format.format(prompt=text_value(row, t.field_prompt), system=system)
        return render_chat(spec.chat, tokenizer, prompt_messages(spec.chat, row), add_generation_prompt=True)
    except RowError as exc:
        raise UserError(f"row: {exc}") from None
