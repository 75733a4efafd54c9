"""The prompt exactly as training laid it out, for everything that prompts a trained model (generate, eval, the
Studio's playground, the card's example): one function per form — `render` (prompt and answer), `format_prompt`
(text), `encode_prompt` (token ids), `question_prompt` (a user's question in the row's place) — for every format and method, so no caller reaches into `formats`.
"""

from __future__ import annotations

from finetune import methods
from finetune.config import Config, DatasetConfig, PreferenceType
from finetune.data import answer_format, chat, formats, mistral_chat, preference_format, unpaired_format
from finetune.data.tokenizer import is_mistral_common
from finetune.errors import UserError


def render(cfg: Config, ds_cfg: DatasetConfig, row: dict, tokenizer) -> tuple[str | list[dict], str]:
    """(prompt, answer) of a row as training lays it out.

    Text formats (custom dict, alpaca, completion): the prompt text (before the tokenizer adds BOS) and the
    answer text (EOS is appended at tokenization). chat_template: the messages before the last assistant
    turn, and that turn's content. A bad row raises UserError naming the field.
    """
    fmt = formats.build_format(cfg, ds_cfg, "dataset", tokenizer)
    try:
        if isinstance(fmt.spec, chat.ChatSpec):
            messages = chat.chat_messages(fmt.spec, row)
            last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=len(messages))
            return messages[:last], messages[last]["content"] if last < len(messages) else ""
        return formats.render_text(fmt.spec, row)
    except formats.RowError as exc:
        raise UserError(f"row: {exc}") from None


def format_prompt(cfg: Config, ds_cfg: DatasetConfig, row: dict, tokenizer) -> str:
    """The prompt text the model is trained to answer; chat formats end with the assistant header."""
    if methods.of(cfg).preference_data:
        if unpaired_format.own_layout(ds_cfg, row):  # rl: kto's named types, dicts, TRL message lists
            return unpaired_format.format_prompt(cfg, ds_cfg, row, tokenizer)
        return preference_format.format_prompt(cfg, ds_cfg, row, tokenizer)
    prompt, _ = render(cfg, ds_cfg, row, tokenizer)
    if isinstance(prompt, str):
        return prompt
    if is_mistral_common(tokenizer):  # its control tokens as text, for reading only
        return tokenizer.decode(mistral_chat.encode_prompt(tokenizer, prompt))
    spec = formats.build_format(cfg, ds_cfg, "dataset", tokenizer).spec
    return chat.render_chat(spec, tokenizer, prompt, add_generation_prompt=True)


def encode_prompt(cfg: Config, ds_cfg: DatasetConfig, row: dict, tokenizer) -> list[int]:
    """The prompt's token ids exactly as in training (one BOS: the tokenizer's, or the chat template's); a bad
    row raises UserError.

    completion trains on raw text after BOS, so its prompt is BOS + the row's text (the model continues it);
    input_output's prompt is its segments before the first trained one (no special tokens added, as trained).
    """
    if is_mistral_common(tokenizer):  # chat_template rows only (config/mistral_checks.py); never via text
        return mistral_chat.encode_prompt(tokenizer, render(cfg, ds_cfg, row, tokenizer)[0])
    kind = None if methods.of(cfg).preference_data else answer_format.format_kind(ds_cfg)
    if kind in ("input_output", "completion"):
        return _raw_prompt(cfg, ds_cfg, row, tokenizer, kind)
    text = format_prompt(cfg, ds_cfg, row, tokenizer)
    chat_prompt = (
        unpaired_format.is_chat(ds_cfg, row)  # chat_template, or rl: kto's chatml.* / llama3.* types
        if methods.of(cfg).preference_data
        else isinstance(formats.build_format(cfg, ds_cfg, "dataset", tokenizer).spec, chat.ChatSpec)
    )
    return tokenizer(text, add_special_tokens=not chat_prompt)["input_ids"]


def _raw_prompt(cfg: Config, ds_cfg: DatasetConfig, row: dict, tokenizer, kind: str) -> list[int]:
    """completion and input_output prompts: tokenized piece by piece as training tokenized them."""
    spec = formats.build_format(cfg, ds_cfg, "datasets[0]", tokenizer).spec
    try:
        if kind == "input_output":  # the segments before the first trained one
            texts = formats.prompt_and_answer(formats.segments(spec, row))[0]
            return [t for ids in formats.token_ids(tokenizer, texts, add_special_tokens=False) for t in ids]
        text = formats.text_value(row, spec.field_instruction)
    except formats.RowError as exc:
        raise UserError(f"row: {exc}") from None
    bos = formats.token_ids(tokenizer, [""], add_special_tokens=True)[0]
    return bos + formats.token_ids(tokenizer, [text], add_special_tokens=False)[0]


def question_prompt(
    cfg: Config,
    ds: DatasetConfig,
    tokenizer,
    question: str,
    system: str | None = None,
    history: list[tuple[str, str]] = (),
) -> list[int]:
    """The prompt ids for a user's question (after `history`'s (role, text) turns in chat formats)."""
    if isinstance(ds.type, PreferenceType):  # a DPO run: its pairs' prompt_format (preference_format.py)
        if system and "{system}" not in ds.type.prompt_format:
            raise UserError("--system: this run's prompt_format has no {system} (it trained without one)")
        return encode_prompt(
            cfg, ds, {ds.type.field_prompt: question, ds.type.field_system: system or ""}, tokenizer
        )
    kind = answer_format.format_kind(ds)
    spec = formats.build_format(cfg, ds, "datasets[0]", tokenizer).spec
    if kind == "chat":
        # an empty assistant turn last: data.render keeps every message before the last assistant turn
        turns = [*([("system", system)] if system else []), *history, ("user", question), ("assistant", "")]
        row = {spec.field_messages: [{spec.role_key: r, spec.content_key: c} for r, c in turns]}
        return encode_prompt(cfg, ds, row, tokenizer)
    if system and kind != "custom":
        raise UserError(f"--system: this run's {kind} format has no system prompt (it trained without one)")
    if kind == "input_output":  # the question is the text before the answer, as the segments were
        return encode_prompt(cfg, ds, {spec.field: [{"label": False, "text": question}]}, tokenizer)
    row = {spec.field_instruction: question, **({spec.field_output: ""} if spec.field_output else {})}
    if system and ds.type.field_system:
        row[ds.type.field_system] = system
    elif system:
        ds = ds.model_copy(update={"type": ds.type.model_copy(update={"system_prompt": system})})
    return encode_prompt(cfg, ds, row, tokenizer)
