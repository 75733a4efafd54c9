"""The data stage: the config's datasets -> tokenized train (and eval) sets, cached by what makes the tokens.

`prepare(cfg, tokenizer)` loads every dataset entry (sources.py), renders and tokenizes its rows in its
format (formats.py, run by encode.py), drops/truncates/deduplicates and counts, splits off the eval set,
and saves the result with `save_to_disk` under `dataset_prepared_path/<fingerprint>/`. The fingerprint
hashes everything that changes the tokens (the data files' bytes, the format settings, the tokenizer and
its chat template, sequence_len ...), so a changed config never reuses a stale cache, and an unchanged one
never re-tokenizes. `format_prompt` / `encode_prompt` give generation the exact prompt training used.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune.config import Config, DatasetConfig
from finetune.data import chat as chat_format
from finetune.data import encode, formats, report, sources
from finetune.errors import UserError
from finetune.files import atomic_dir, atomic_write_json

FORMAT_VERSION = 3  # bump when the token layout changes, so caches written by older code are not reused
SOURCE = (
    "source"  # SFT caches: the dataset entry each row came from (the data report's); training never sees it
)
STATS_FILE = "finetune_stats.json"
# Config keys that change the prepared tokens (dataset entries and the tokenizer are hashed separately).
TOKEN_KEYS = (
    "sequence_len",
    "excess_length_strategy",
    "min_sample_len",
    "train_on_inputs",
    "val_set_size",
    "seed",
    "shuffle_merged_datasets",
    "dataset_exact_deduplication",
    "chat_template",
    "chat_template_jinja",
    "eot_tokens",
)


@dataclass
class PreparedData:
    """Tokenized data: columns input_ids, attention_mask, labels (-100 = not trained)."""

    train: Any  # datasets.Dataset (without the cache's `source` column: see load_prepared)
    eval: Any | None  # datasets.Dataset from val_set_size or test_datasets, else None
    stats: dict  # rows_in, rows_kept, dropped_too_long, truncated, empty_answer, duplicates, tokens, trained_tokens ...
    path: Path | None  # the cache folder (None when built in memory by a non-main process)


def prepare(cfg: Config, tokenizer, is_main: bool = True) -> PreparedData:
    """Load the cached tokenized data for this config, building it first when absent.

    Distributed runs call it on the main process first, then on the others after a barrier: those only
    read the cache (if it is not visible there, e.g. a node without a shared disk, they build the same
    data in memory and write nothing).
    """
    if cfg.online_rl:  # rl: grpo: prompt and reference text only; TRL tokenizes and generates (prompts.py)
        from finetune.data import prompts

        train, _, stats = prompts.build(cfg, tokenizer)
        return PreparedData(train, None, stats, None)
    inputs = fingerprint_inputs(cfg, tokenizer)
    folder = Path(cfg.prepared_path) / _digest(inputs)
    if (folder / STATS_FILE).is_file():
        data = load_prepared(folder)
        if is_main:
            _summary(cfg, data.stats, folder, reused=True)
        return data
    train, eval_, stats = build(cfg, tokenizer, show_progress=is_main)
    if not is_main:
        train, eval_ = (_without_source(t) for t in (train, eval_))
        return PreparedData(_dataset(train), _dataset(eval_) if eval_ is not None else None, stats, None)
    try:
        _save(folder, train, eval_, stats, inputs)
    except OSError:
        if not (folder / STATS_FILE).is_file():
            raise  # else another process wrote the same cache first: identical tokens, use it
    data = load_prepared(folder)
    _summary(cfg, stats, folder, reused=False)
    return data


def _summary(cfg: Config, stats: dict, folder: Path, reused: bool) -> None:
    if cfg.preference:
        from finetune.data import preference as preference_data

        preference_data.summary(stats, folder, reused)
    else:
        report.summary(stats, folder, reused)


def build(cfg: Config, tokenizer, show_progress: bool = True):
    """(train table, eval table or None, stats) in memory; raises UserError on the first bad row."""
    if cfg.preference:  # rl: dpo, reward_model: (prompt, chosen, rejected) tables
        from finetune.data import preference as preference_data

        return preference_data.build(cfg, tokenizer, show_progress)
    processes = cfg.dataset_processes or os.cpu_count() or 1
    with no_datasets_bars(), report.progress() if show_progress else nullcontext() as bars:
        train, stats = _encode_entries(cfg, cfg.datasets, "datasets", tokenizer, processes, bars)
        test = (
            _encode_entries(cfg, cfg.test_datasets, "test_datasets", tokenizer, processes, bars)
            if cfg.test_datasets
            else None
        )
    if cfg.dataset_exact_deduplication:
        train, stats["duplicates"] = encode.deduplicate(train)
        stats["rows_kept"] -= stats["duplicates"]
    if not train.num_rows:
        raise UserError(f"datasets: no rows left to train on ({report.removals(stats)})")
    if test is not None:
        eval_, test_stats = test
        if cfg.dataset_exact_deduplication:  # a test row that is also a training row measures nothing
            eval_, test_stats["duplicates"] = encode.deduplicate(eval_, against=train)
            test_stats["rows_kept"] -= test_stats["duplicates"]
        if not eval_.num_rows:  # an empty split would be saved as a folder datasets cannot read back
            limits = {"sequence_len": cfg.sequence_len, "excess_length_strategy": cfg.excess_length_strategy}
            why = report.removals({**test_stats, **limits, "min_sample_len": cfg.min_sample_len})
            raise UserError(f"test_datasets: no rows left to evaluate on ({why})")
        train, _ = encode.split(train, 0, cfg.seed, cfg.shuffle_merged_datasets)
        stats["test_datasets"] = test_stats
    else:
        train, eval_ = encode.split(train, cfg.val_set_size, cfg.seed, cfg.shuffle_merged_datasets)
    stats["tokens"], stats["trained_tokens"] = encode.token_counts(train)
    stats["train_rows"] = train.num_rows
    stats["eval_rows"] = eval_.num_rows if eval_ is not None else 0
    stats["eval_tokens"] = encode.token_counts(eval_)[0]
    stats["sequence_len"], stats["excess_length_strategy"] = cfg.sequence_len, cfg.excess_length_strategy
    stats["min_sample_len"] = cfg.min_sample_len
    return train, eval_, stats


@contextmanager
def no_datasets_bars():
    """datasets' tqdm bars off while we load and save (ours are rich bars), restored after."""
    import datasets

    were_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if were_on:
            datasets.enable_progress_bars()


def _encode_entries(cfg, entries, key, tokenizer, processes, bars):
    """The entries' rows, tokenized and filtered, with a `source` column (the entry's index) + counts."""
    import numpy as np
    import pyarrow as pa

    tables, totals, entries_out = [], dict.fromkeys(encode.COUNTERS, 0), []
    for i, ds in enumerate(entries):
        where = f"{key}[{i}]"
        fmt = formats.build_format(cfg, ds, where, tokenizer)
        loaded = sources.load_sources(ds, where, cfg.seed)
        table, counts = encode.encode_sources(loaded, fmt, tokenizer, processes, bars)
        entries_out.append(encode.entry_stats(where, ds, loaded, counts, table))
        tables.append(table.append_column(SOURCE, pa.array(np.full(table.num_rows, i, np.int16))))
        totals = {k: totals[k] + counts[k] for k in totals}
    return pa.concat_tables(tables), {**totals, "sources": entries_out}


# ---------------------------------------------------------------- the cache


def fingerprint_inputs(cfg: Config, tokenizer) -> dict:
    """Everything the prepared tokens depend on (written next to the cache, for humans)."""

    def entry(ds: DatasetConfig, where: str) -> dict:
        return {"config": ds.model_dump(mode="json"), "content_sha256": sources.content_digest(ds, where)}

    return {
        "format_version": FORMAT_VERSION,
        "datasets": [entry(ds, f"datasets[{i}]") for i, ds in enumerate(cfg.datasets)],
        "test_datasets": [entry(ds, f"test_datasets[{i}]") for i, ds in enumerate(cfg.test_datasets or [])],
        "settings": {key: getattr(cfg, key) for key in TOKEN_KEYS},
        "tokenizer_sha256": tokenizer_digest(tokenizer),
        **({"preference": _preference_settings(cfg)} if cfg.preference else {}),
    }


def _preference_settings(cfg: Config) -> dict:
    from finetune.data import preference as preference_data

    return preference_data.fingerprint_settings(cfg)


def fingerprint(cfg: Config, tokenizer) -> str:
    """16 hex digits naming the cache folder of this config's tokens."""
    return _digest(fingerprint_inputs(cfg, tokenizer))


def _digest(inputs: dict) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]


def tokenizer_digest(tokenizer) -> str:
    """Vocabulary, merges, added tokens, post-processor (BOS/EOS rules), special tokens and chat template.

    The backend's padding/truncation state is left out: a call like `tokenizer(x, padding=True)` before
    `prepare` changes it without changing our tokens, and must not cost a cache miss.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        state.pop("truncation", None)
        state.pop("padding", None)
        model = json.dumps(state, sort_keys=True)
    else:
        model = json.dumps(sorted(tokenizer.get_vocab().items()))
    parts = [
        type(tokenizer).__name__,
        model,
        str(getattr(tokenizer, "chat_template", None)),
        json.dumps({k: str(v) for k, v in tokenizer.special_tokens_map.items()}, sort_keys=True),
    ]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _dataset(table):
    import datasets
    from datasets.table import InMemoryTable

    return datasets.Dataset(InMemoryTable(table))


def _save(folder: Path, train, eval_, stats: dict, inputs: dict) -> None:
    """Write the cache atomically: a reader sees a complete folder or none."""
    import datasets

    with no_datasets_bars(), atomic_dir(folder, overwrite=True) as tmp:
        if eval_ is None:
            _dataset(train).save_to_disk(str(tmp))
        else:
            datasets.DatasetDict({"train": _dataset(train), "validation": _dataset(eval_)}).save_to_disk(
                str(tmp)
            )
        atomic_write_json(tmp / "finetune_inputs.json", inputs)
        atomic_write_json(tmp / STATS_FILE, {"created": time.strftime("%Y-%m-%d %H:%M:%S"), "stats": stats})


def load_prepared(folder: str | os.PathLike, with_source: bool = False) -> PreparedData:
    """A prepared-data folder (written by `prepare`) as PreparedData; the `source` column only when asked
    (the data report): the model's inputs are input_ids, attention_mask and labels alone."""
    import datasets

    folder = Path(folder)
    saved = datasets.load_from_disk(str(folder))
    stats = json.loads((folder / STATS_FILE).read_text())["stats"]
    train, eval_ = (
        (saved["train"], saved["validation"]) if isinstance(saved, datasets.DatasetDict) else (saved, None)
    )
    if not with_source:
        train, eval_ = (_without_source(t) for t in (train, eval_))
    return PreparedData(train, eval_, stats, folder)


def _without_source(table):
    """A table (Arrow or datasets) without the `source` column, when it has one."""
    if table is None or SOURCE not in table.column_names:
        return table
    return (
        table.remove_columns([SOURCE]) if hasattr(table, "remove_columns") else table.drop_columns([SOURCE])
    )


# ---------------------------------------------------------------- prompts for generation (issue 9)


def render(cfg: Config, ds_cfg: DatasetConfig, row: dict, tokenizer) -> tuple[str | list[dict], str]:
    """(prompt, answer) of a row as training lays it out.

    Text formats (custom dict, alpaca, completion): the prompt text (before the tokenizer adds BOS) and the
    answer text (EOS is appended at tokenization). chat_template: the messages before the last assistant
    turn, and that turn's content. A bad row raises UserError naming the field.
    """
    fmt = formats.build_format(cfg, ds_cfg, "dataset", tokenizer)
    try:
        if isinstance(fmt.spec, chat_format.ChatSpec):
            messages = chat_format.chat_messages(fmt.spec, row)
            last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=len(messages))
            return messages[:last], messages[last]["content"] if last < len(messages) else ""
        return formats.render_text(fmt.spec, row)
    except formats.RowError as exc:
        raise UserError(f"row: {exc}") from None


def format_prompt(cfg: Config, ds_cfg: DatasetConfig, row: dict, tokenizer) -> str:
    """The prompt text the model is trained to answer; chat formats end with the assistant header."""
    if cfg.preference:
        from finetune.data import preference_format as preference
        from finetune.data import unpaired_format

        if unpaired_format.own_layout(ds_cfg, row):  # rl: kto's named types, dicts, TRL message lists
            return unpaired_format.format_prompt(cfg, ds_cfg, row, tokenizer)
        return preference.format_prompt(cfg, ds_cfg, row, tokenizer)
    prompt, _ = render(cfg, ds_cfg, row, tokenizer)
    if isinstance(prompt, str):
        return prompt
    spec = formats.build_format(cfg, ds_cfg, "dataset", tokenizer).spec
    return chat_format.render_chat(spec, tokenizer, prompt, add_generation_prompt=True)


def encode_prompt(cfg: Config, ds_cfg: DatasetConfig, row: dict, tokenizer) -> list[int]:
    """The prompt's token ids exactly as in training (one BOS: the tokenizer's, or the chat template's)."""
    text = format_prompt(cfg, ds_cfg, row, tokenizer)
    from finetune.data import unpaired_format

    chat = (
        unpaired_format.is_chat(ds_cfg, row)  # chat_template, or rl: kto's chatml.* / llama3.* types
        if cfg.preference
        else isinstance(formats.build_format(cfg, ds_cfg, "dataset", tokenizer).spec, chat_format.ChatSpec)
    )
    return tokenizer(text, add_special_tokens=not chat)["input_ids"]


# ---------------------------------------------------------------- `finetune preprocess`


def preprocess_command(cfg: Config, inspect: int = 0) -> PreparedData:
    """`finetune preprocess CONFIG [--inspect N]`: build (or reuse) the cache; optionally show N examples."""
    from finetune import hub
    from finetune.data.tokenizer import load_tokenizer

    offline = hub.offline_if_unreachable(cfg.hub_ids)
    if offline:
        report.note(offline)
    tokenizer = load_tokenizer(cfg)
    data = prepare(cfg, tokenizer)
    if inspect:
        if cfg.online_rl:  # rl: grpo: the prompts generation starts from, the references rewards use
            for row in data.train.select(range(min(inspect, len(data.train)))):
                report.note(
                    f"{row['source']}\n  prompt: {row['prompt']!r}\n  reference: {row['reference']!r}"
                )
        elif cfg.preference:
            from finetune.data import preference as preference_data

            preference_data.examples(data.train, tokenizer, inspect)
        else:
            report.examples(data.train, tokenizer, inspect)
            report.length_distribution(data.train, data.eval, cfg.sequence_len)
    return data
