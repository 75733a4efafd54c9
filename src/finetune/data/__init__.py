"""The data stage: the config's datasets -> tokenized train (and eval) sets, cached by what makes the tokens.

`prepare(cfg, tokenizer)` loads every dataset entry (sources.py), renders and tokenizes its rows in its
format (formats.py, run by encode.py), drops/truncates/deduplicates and counts, splits off the eval set,
and saves the result with `save_to_disk` under `dataset_prepared_path/<fingerprint>/`. The fingerprint
hashes everything that changes the tokens (the data files' bytes, the format settings, the tokenizer and
its chat template, sequence_len ...), so a changed config never reuses a stale cache, and an unchanged one
never re-tokenizes. `format_prompt` / `encode_prompt` (trained_prompt.py) give generation the exact prompt
training used.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune import methods
from finetune.config import Config, DatasetConfig
from finetune.data import encode, formats, lengths, preference, prompts, report, sources
from finetune.data.batch_cuts import cut_points  # noqa: F401 - the plan cuts token-budget batches as train does
from finetune.data.report import no_datasets_bars  # noqa: F401 - the trainers' column shaping reads it here
from finetune.data.trained_prompt import (  # noqa: F401 - the prompt as trained
    encode_prompt,
    format_prompt,
    question_prompt,
    render,
)
from finetune.errors import UserError
from finetune.files import atomic_dir, atomic_write_json

FORMAT_VERSION = 3  # bump when the token layout changes, so caches written by older code are not reused
SOURCE = (
    "source"  # SFT caches: the dataset entry each row came from (the data report's); training never sees it
)
STATS_FILE = "finetune_stats.json"
INPUTS_FILE = "finetune_inputs.json"  # fingerprint_inputs, beside the cache (cached_stats matches on it)
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
    if methods.of(cfg).online:  # rl: grpo: prompt and reference text only; TRL tokenizes and generates
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
    if methods.of(cfg).preference_data:
        preference.summary(stats, folder, reused)
    else:
        report.summary(stats, folder, reused)


def build(cfg: Config, tokenizer, show_progress: bool = True):
    """(train table, eval table or None, stats) in memory; raises UserError on the first bad row."""
    if methods.of(cfg).preference_data:  # (prompt, chosen, rejected) tables, or KTO's labelled rows
        return preference.build(cfg, tokenizer, show_progress)
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
    return {
        **_file_inputs(cfg),
        "tokenizer_sha256": tokenizer_digest(tokenizer),
        **({"preference": preference.fingerprint_settings(cfg)} if methods.of(cfg).preference_data else {}),
    }


def _file_inputs(cfg: Config) -> dict:
    """The inputs known without a tokenizer: the data files (by content) and the token settings."""

    def entry(ds: DatasetConfig, where: str) -> dict:
        return {"config": ds.model_dump(mode="json"), "content_sha256": sources.content_digest(ds, where)}

    return {
        "format_version": FORMAT_VERSION,
        "datasets": [entry(ds, f"datasets[{i}]") for i, ds in enumerate(cfg.datasets)],
        "test_datasets": [entry(ds, f"test_datasets[{i}]") for i, ds in enumerate(cfg.test_datasets or [])],
        "settings": {key: getattr(cfg, key) for key in TOKEN_KEYS},
    }


def cached_stats(cfg: Config) -> dict | None:
    """The stats of this config's prepared data (`finetune preprocess` or an earlier run), found without a
    tokenizer: the newest cache under dataset_prepared_path made from the same data files (by content) and the
    same token settings. None when there is none. (`finetune plan` sizes a run from it.)"""
    root = Path(cfg.prepared_path).expanduser()
    if not root.is_dir():
        return None
    inputs = _file_inputs(cfg)
    want = json.loads(
        json.dumps({k: inputs[k] for k in ("format_version", "datasets", "settings")}, default=str)
    )
    found = []
    for saved in root.glob(f"*/{INPUTS_FILE}"):
        try:
            have = json.loads(saved.read_text())
            stats = json.loads((saved.parent / STATS_FILE).read_text())["stats"]
        except (OSError, ValueError, KeyError):
            continue
        if all(have.get(key) == value for key, value in want.items()):
            found.append((saved.stat().st_mtime, stats))
    return max(found, key=lambda x: x[0])[1] if found else None


def length_stats(cfg: Config, tokenizer=None, table=None) -> dict | None:
    """{"rows", "tokens", "longest", "lengths" (every row's, numpy)} of the training set (lengths.py): of `table`
    (a tokenized table already in hand), else of this config's prepared data (the cache, prepared first when
    absent; `tokenizer` loaded from the config when not given). None for data of another layout: preference
    pairs and GRPO prompts. `finetune plan` and train's fit check size the largest micro-batch from it."""
    if table is None:
        if not methods.of(cfg).answers:
            return None
        from finetune.data.tokenizer import load_tokenizer  # transformers: loaded only when needed

        table = prepare(cfg, tokenizer if tokenizer is not None else load_tokenizer(cfg)).train
    return lengths.table_lengths(table)


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
        atomic_write_json(tmp / INPUTS_FILE, inputs)
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
        if methods.of(cfg).online:  # rl: grpo: the prompts generation starts from, the references rewards use
            for row in data.train.select(range(min(inspect, len(data.train)))):
                report.note(
                    f"{row['source']}\n  prompt: {row['prompt']!r}\n  reference: {row['reference']!r}"
                )
        elif methods.of(cfg).preference_data:
            preference.examples(data.train, tokenizer, inspect)
        else:
            report.examples(data.train, tokenizer, inspect)
            report.length_distribution(data.train, data.eval, cfg.sequence_len)
    return data
