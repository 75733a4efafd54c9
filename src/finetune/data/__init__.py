"""The data stage: the config's datasets -> tokenized train (and eval) sets, cached by what makes the tokens.

`prepare(cfg, tokenizer)` loads every dataset entry (sources.py), renders and tokenizes its rows in its
format (formats.py, run by encode.py), drops/truncates/deduplicates and counts, splits off the eval set,
and saves the result with `save_to_disk` under `dataset_prepared_path/<fingerprint>/`. The fingerprint
hashes everything that changes the tokens (the data files' bytes, the format settings, the tokenizer and
its chat template, sequence_len ...), so a changed config never reuses a stale cache, and an unchanged one
never re-tokenizes (cache.py). `format_prompt` / `encode_prompt` (trained_prompt.py) give generation the exact
prompt training used.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from pathlib import Path

from finetune import hub, methods
from finetune.config import Config
from finetune.data import cache, encode, formats, lengths, preference, prompts, report, sources
from finetune.data.batch_cuts import cut_points  # noqa: F401 - the plan cuts token-budget batches as train does
from finetune.data.cache import (  # noqa: F401 - the cache's public names, read as data.X
    FORMAT_VERSION,
    SOURCE,
    STATS_FILE,
    TOKEN_KEYS,
    PreparedData,
    cached_stats,
    fingerprint,
    fingerprint_inputs,
    load_prepared,
    tokenizer_digest,
)
from finetune.data.report import no_datasets_bars  # noqa: F401 - the trainers' column shaping reads it here
from finetune.data.trained_prompt import (  # noqa: F401 - the prompt as trained
    encode_prompt,
    format_prompt,
    question_prompt,
    render,
)
from finetune.errors import UserError


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
    folder = Path(cfg.prepared_path) / cache.digest(inputs)
    if (folder / STATS_FILE).is_file():
        data = load_prepared(folder)
        if is_main:
            _summary(cfg, data.stats, folder, reused=True)
        return data
    train, eval_, stats = build(cfg, tokenizer, show_progress=is_main)
    if not is_main:
        train, eval_ = (cache.without_source(t) for t in (train, eval_))
        return PreparedData(
            cache.as_dataset(train), cache.as_dataset(eval_) if eval_ is not None else None, stats, None
        )
    try:
        cache.save(folder, train, eval_, stats, inputs)
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


# ---------------------------------------------------------------- `finetune preprocess`


def preprocess_command(cfg: Config, inspect: int = 0) -> PreparedData:
    """`finetune preprocess CONFIG [--inspect N]`: build (or reuse) the cache; optionally show N examples."""
    from finetune.data.tokenizer import load_tokenizer  # transformers: loaded only when needed

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
