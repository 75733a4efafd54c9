"""Dataset-level config: one `datasets:` entry and the `type:` dicts that describe its prompt format.

`Config.datasets` and `Config.test_datasets` (schema.py) are lists of `DatasetConfig`.
`StrictModel` and `check_exists` live here because the dataset entries are their first users; the top-level
schema reuses both (every model forbids unknown keys and is frozen; local paths must exist).
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator


def looks_local(path: str) -> bool:
    """Local paths are checked to exist; hub ids (`owner/name`) are never contacted while validating."""
    return (
        path.startswith(("/", "./", "../", "~"))
        or Path(path).suffix.lower()
        in {".json", ".jsonl", ".csv", ".parquet", ".arrow", ".txt", ".yaml", ".yml"}
        or path.count("/") > 1
        or os.path.exists(os.path.expanduser(path))
    )


def check_exists(path: str | None, what: str) -> str | None:
    if path and looks_local(path) and not os.path.exists(os.path.expanduser(path)):
        raise ValueError(f"{what} not found: {path}")
    return path


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class DatasetType(StrictModel):
    """axolotl's user-defined prompt format: `type: {field_instruction: ..., format: "..."}`."""

    system_prompt: str = Field(
        "", description="System text for every row (as in axolotl, ignored when `field_system` is set)."
    )
    field_system: str | None = Field(None, description="Column holding a per-row system prompt.")
    field_instruction: str = Field("instruction", description="Column holding the instruction.")
    field_input: str | None = Field(None, description="Column holding the optional input.")
    field_output: str = Field("output", description="Column holding the answer (the trained part).")
    format: str = Field(
        "{instruction} {input} ",
        description="Prompt template with {instruction} and {input}; the answer follows it directly.",
    )
    no_input_format: str | None = Field(None, description="Template used when the row's input is empty.")
    system_format: str = Field(
        "{system}", description="Template for the system text, prepended to the prompt."
    )


class PreferenceType(StrictModel):
    """axolotl's user-defined preference format (rl: dpo, reward_model): `type: {field_prompt: ..., field_chosen: ...}`."""

    field_prompt: str = Field("prompt", description="Column holding the prompt.")
    field_system: str = Field(
        "system", description="Column holding an optional per-row system text (`{system}` in prompt_format)."
    )
    field_chosen: str = Field("chosen", description="Column holding the preferred answer.")
    field_rejected: str = Field("rejected", description="Column holding the worse answer.")
    prompt_format: str = Field(
        "{prompt}", description="Prompt template with {prompt} (and {system}); the answers follow it as is."
    )
    chosen_format: str = Field("{chosen}", description="Template of the preferred answer, with {chosen}.")
    rejected_format: str = Field("{rejected}", description="Template of the worse answer, with {rejected}.")


class UnpairedType(StrictModel):
    """axolotl's user-defined KTO format (rl: kto): one completion and a boolean label per row."""

    field_prompt: str = Field("prompt", description="Column holding the prompt.")
    field_system: str = Field(
        "system", description="Column holding an optional per-row system text (`{system}` in prompt_format)."
    )
    field_completion: str = Field("completion", description="Column holding the answer.")
    field_label: str = Field(
        "label", description="Column holding the answer's label: true (desirable) or false (undesirable)."
    )
    prompt_format: str = Field(
        "{prompt}", description="Prompt template with {prompt} (and {system}); the answer follows it as is."
    )
    completion_format: str = Field("{completion}", description="Template of the answer, with {completion}.")


PREFERENCE_TYPE_KEYS = frozenset(PreferenceType.model_fields) - {"field_system"}
UNPAIRED_TYPE_KEYS = frozenset({"field_completion", "field_label", "completion_format"})
# axolotl's KTO strategies (prompt_strategies/kto): rows with a completion and a label, laid out by the named
# chat template. argilla: instruction; intel: question; prompt_pairs, ultra: prompt (each with an optional
# system); argilla_chat: a `completion` conversation whose last turn is the answer.
KTO_TYPES = tuple(f"{t}.{s}" for t in ("chatml", "llama3") for s in ("argilla", "argilla_chat", "intel", "prompt_pairs", "ultra"))  # fmt: skip
DATASET_TYPES = ("alpaca", "chat_template", "completion", "input_output")
# axolotl's `alpaca:<style>`: alpaca's fields and system prompt in another turn layout (formats.ALPACA_TURNS)
ALPACA_TYPES = ("alpaca:chat", "alpaca:chatml", "alpaca:phi")
# axolotl's other names of the same strategies
TYPE_ALIASES = {
    "chat_template.default": "chat_template",
    "alpaca:instruct": "alpaca",
    "alpaca_chat": "alpaca:chat",
}


def type_tag(v) -> str:
    """Which `type:` model a value is: `kto` (completion/label columns), `pref` (chosen/rejected columns), `dict`
    (custom prompt) or `str`."""
    if isinstance(v, UnpairedType) or (isinstance(v, dict) and UNPAIRED_TYPE_KEYS & set(v)):
        return "kto"
    if isinstance(v, PreferenceType) or (isinstance(v, dict) and PREFERENCE_TYPE_KEYS & set(v)):
        return "pref"
    return "dict" if isinstance(v, dict | DatasetType) else "str"


DatasetTypeValue = Annotated[
    Annotated[str, Tag("str")]
    | Annotated[DatasetType, Tag("dict")]
    | Annotated[PreferenceType, Tag("pref")]
    | Annotated[UnpairedType, Tag("kto")],
    Discriminator(type_tag),
]


class DatasetConfig(StrictModel):
    """One entry of `datasets:` / `test_datasets:`."""

    path: str = Field(description="Local file or folder (JSONL/JSON/CSV/Parquet), or a hub dataset id.")
    type: DatasetTypeValue = Field(
        "alpaca",
        description="Prompt format: alpaca, alpaca:chat / alpaca:chatml / alpaca:phi (alpaca's fields in another turn layout, as axolotl writes them), chat_template, completion, input_output (axolotl's template-free rows: `segments`, a list of {text, label}; the texts are joined as they are, no BOS/EOS added, and segments with label true are trained), or a custom dict. rl: kto also reads axolotl's unpaired types chatml.* / llama3.* argilla, argilla_chat, intel, prompt_pairs, ultra.",
    )
    ds_type: Literal["json", "csv", "parquet", "arrow", "text"] | None = Field(
        None, description="File format when the extension does not tell."
    )
    data_files: str | list[str] | None = Field(None, description="Files to read inside `path`.")
    split: str = Field("train", description="Split to read.")
    weight: float = Field(
        1.0,
        gt=0,
        description="How much of this entry to train on (axolotl's key): below 1 keeps a seeded random share of its rows (`seed`) before tokenization; above 1 repeats it, whole copies plus a seeded share for the fraction (2.5: every row twice, half of them a third time), which axolotl cannot. Exact row counts: round(weight × rows). Part of the cache fingerprint; `finetune data` and the training summary show each entry's rows and trained tokens before and after, and its share of the trained tokens.",
    )
    name: str | None = Field(None, description="Dataset configuration name (hub datasets).")
    revision: str | None = Field(None, description="Hub dataset revision.")
    field: str | None = Field(None, description="`completion`: the column holding the raw text.")
    overlap_len: int | None = Field(
        None,
        ge=0,
        description="`completion`: tokens each chunk of a text longer than sequence_len repeats from the one "
        "before (texts are split into chunks of sequence_len, as axolotl does; default 0).",
    )
    field_messages: str = Field("messages", description="`chat_template`: the column holding the turns.")
    message_property_mappings: dict[str, str] | None = Field(
        None, description="`chat_template`: map `role`/`content` to the row's key names."
    )
    message_field_role: str | None = Field(
        None, description="Deprecated alias of message_property_mappings.role."
    )
    message_field_content: str | None = Field(
        None, description="Deprecated alias of message_property_mappings.content."
    )
    roles_to_train: list[str] | None = Field(
        None, description="`chat_template`: roles whose turns are trained."
    )
    train_on_eos: Literal["turn", "last", "all", "none"] | None = Field(
        None, description="`chat_template`: which end-of-turn tokens are trained."
    )
    roles: dict[str, list[str]] | None = Field(
        None, description="`chat_template`: map row roles to template roles."
    )
    drop_system_message: bool | None = Field(None, description="`chat_template`: drop system turns.")
    chat_template: str | None = Field(None, description="`chat_template`: per-dataset template override.")
    field_chosen: str | None = Field(
        None,
        description="`chat_template` preference rows (rl: dpo, reward_model): the column holding the preferred answer (a string, an assistant message, or a list ending with it); default `chosen`.",
    )
    field_rejected: str | None = Field(
        None, description="`chat_template` preference rows: the column holding the worse answer (`rejected`)."
    )

    @field_validator("path")
    @classmethod
    def _path_exists(cls, v: str) -> str:
        return check_exists(v, "dataset file") or v

    @field_validator("type")
    @classmethod
    def _known_type(cls, v):
        if not isinstance(v, str):
            return v
        v = TYPE_ALIASES.get(v, v)
        if v.split(":")[0] == "sharegpt":  # removed from axolotl too; say how to port it
            raise ValueError(
                "'sharegpt' is not supported (axolotl removed it as well): use type: chat_template with "
                "field_messages: conversations, message_property_mappings: {role: from, content: value} and "
                "roles: {user: [human], assistant: [gpt]}"
            )
        known = DATASET_TYPES + ALPACA_TYPES + KTO_TYPES
        if v not in known:
            # the nearest names only: the whole list (with kto's ten) is a paragraph, not a line
            close = difflib.get_close_matches(v, [*known, *TYPE_ALIASES], n=2, cutoff=0.6)
            hint = (
                f"did you mean {' or '.join(close)}?" if close
                else f"known: {', '.join(DATASET_TYPES)}, ... or a field_* dict (README: dataset formats)"
            )  # fmt: skip
            raise ValueError(f"unknown dataset type '{v}' ({hint})")
        return v
