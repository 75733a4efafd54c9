"""The data stage for preference training: datasets -> (prompt_ids, chosen_ids, rejected_ids) tables, or for
rl: kto (prompt_ids, completion_ids, label) tables (unpaired.py: unpaired rows, and pairs split in two).

`data.prepare` dispatches here for rl: dpo, kto, orpo, simpo and reward_model, so preference data is loaded (sources.py), cached
by fingerprint, split (val_set_size / test_datasets) and deduplicated exactly like SFT data, and a bad row is
reported by file and line. Rows are rendered and tokenized by preference_format.py (KTO's unpaired rows by
unpaired_format.py), then fitted to max_prompt_len and sequence_len, deduplicated and counted by answer_rows.py,
the one path for both kinds of rows. (TRL 1.16 has no max_prompt_length any more; the data stage does its job.)
"""

from __future__ import annotations

import os
from contextlib import nullcontext

from finetune import methods
from finetune.config import Config
from finetune.data import answer_rows, encode, preference_format, report, sources, unpaired, unpaired_format
from finetune.data.report import no_datasets_bars
from finetune.errors import UserError

PREFERENCE_FORMAT_VERSION = (
    2  # bump when the token layout of preference tables changes (2: kto's unpaired rows)
)
COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")


def fingerprint_settings(cfg: Config) -> dict:
    """What preference tables depend on beyond SFT's settings (data.fingerprint_inputs adds it): rl: kto
    keeps unpaired rows (unpaired.py), every other method pairs."""
    rows = methods.of(cfg).rows  # pairs, or unpaired (kto)
    return {"version": PREFERENCE_FORMAT_VERSION, "max_prompt_len": cfg.max_prompt_len, "rows": rows}


def build(cfg: Config, tokenizer, show_progress: bool = True):
    """(train table, eval table or None, stats), in memory; raises UserError on the first bad row."""
    kto = methods.of(cfg).rows == "unpaired"  # unpaired rows (unpaired.py), else pairs
    layout = answer_rows.UNPAIRED if kto else answer_rows.PAIRS
    with no_datasets_bars():
        train, stats = _encode_entries(cfg, cfg.datasets, "datasets", tokenizer, show_progress)
        test = (
            _encode_entries(cfg, cfg.test_datasets, "test_datasets", tokenizer, show_progress)
            if cfg.test_datasets
            else None
        )
    if cfg.dataset_exact_deduplication:
        train, stats["duplicates"] = answer_rows.deduplicate(layout, train)
        stats["rows_kept"] -= stats["duplicates"]
    if not train.num_rows:
        what = "rows" if kto else "preference pairs"
        raise UserError(f"datasets: no {what} left to train on ({removals(stats)})")
    if test is not None:
        eval_, test_stats = test
        if cfg.dataset_exact_deduplication:
            eval_, test_stats["duplicates"] = answer_rows.deduplicate(layout, eval_, against=train)
            test_stats["rows_kept"] -= test_stats["duplicates"]
        train, _ = encode.split(train, 0, cfg.seed, cfg.shuffle_merged_datasets)
        stats["test_datasets"] = test_stats
    else:
        train, eval_ = encode.split(train, cfg.val_set_size, cfg.seed, cfg.shuffle_merged_datasets)
    if kto:
        stats["desirable"], stats["undesirable"] = unpaired.label_counts(train)
        unpaired.check_classes(stats)
    stats["tokens"], stats["trained_tokens"] = answer_rows.token_counts(layout, train)
    stats["train_rows"] = train.num_rows
    stats["eval_rows"] = eval_.num_rows if eval_ is not None else 0
    stats["eval_tokens"] = answer_rows.token_counts(layout, eval_)[0]
    stats["sequence_len"], stats["excess_length_strategy"] = cfg.sequence_len, cfg.excess_length_strategy
    stats["max_prompt_len"] = cfg.max_prompt_len
    return train, eval_, stats


COUNTERS = ("rows_in", "rows_kept", "dropped_too_long", "truncated", "empty_answer", "same_answers")


def _encode_entries(cfg: Config, entries, key: str, tokenizer, show_progress: bool):
    import pyarrow as pa

    kto = methods.of(cfg).rows == "unpaired"
    extra = ("unpaired_rows", "pairs_split") if kto else ()
    tables, totals = [], dict.fromkeys((*COUNTERS, "duplicates", "prompt_truncated", *extra), 0)
    entries_out = []
    progress = report.progress() if show_progress else None
    with progress or nullcontext():
        for i, ds in enumerate(entries):
            where = f"{key}[{i}]"
            specs = {}  # built on first use: an entry's files are pairs or unpaired rows (its columns tell)
            first = len(tables)
            loaded = sources.load_sources(ds, where, cfg.seed)
            for src in loaded:
                rows = unpaired_format.reads_unpaired(ds, src.dataset.column_names)
                if rows and not kto:
                    raise UserError(unpaired.refusal(cfg, where, src.label))
                if rows not in specs:
                    specs[rows] = (
                        unpaired_format.unpaired_spec(cfg, ds, where, tokenizer)
                        if rows
                        else preference_format.pair_spec(cfg, ds, where, tokenizer)
                    )
                work = unpaired.encode_batch if rows else _encode_batch
                name = f"tokenizing {os.path.basename(src.label)}"
                task = progress.add_task(name, total=len(src.dataset)) if progress else None
                start = 0  # index of the batch's first row, for naming a bad row's line
                batches = encode.map_batches(
                    work, (specs[rows], tokenizer), src.dataset, cfg.dataset_processes or os.cpu_count() or 1
                )
                for n, out in batches:
                    layout = answer_rows.UNPAIRED if rows else answer_rows.PAIRS
                    kept = answer_rows.fit(layout, out, src, start, cfg, tokenizer.bos_token_id, totals)
                    table = unpaired.table(kept) if rows else _pairs(kept)
                    tables.append(unpaired.from_pairs(table, totals) if kto and not rows else table)
                    start += n
                    if progress:
                        progress.advance(task, n)
            mine = tables[first:]
            entry = pa.concat_tables(mine) if mine else (unpaired.table() if kto else _empty())
            layout = answer_rows.UNPAIRED if kto else answer_rows.PAIRS
            entries_out.append(_entry_stats(where, ds, loaded, entry, layout))
    totals["sources"] = entries_out
    if not tables:
        return (unpaired.table() if kto else _empty()), totals
    return pa.concat_tables(tables), totals


def _entry_stats(where: str, ds, loaded, table, layout: answer_rows.Layout) -> dict:
    """encode.entry_stats for pairs and unpaired rows: before weighting, tokens are known at weight 1 only."""
    tokens, trained = answer_rows.token_counts(layout, table)
    read = sum(src.rows_read if src.rows_read is not None else len(src.dataset) for src in loaded)
    return {
        "key": where,
        "path": ds.path,
        "weight": ds.weight,
        "rows_read": read,
        "rows_weighted": sum(len(src.dataset) for src in loaded),
        "rows_kept": table.num_rows,
        "tokens": tokens,
        "trained_tokens": trained,
        "trained_tokens_before": trained if ds.weight == 1 else None,
    }


def _encode_batch(spec, tokenizer, batch: dict) -> dict:
    rows = [{k: v[j] for k, v in batch.items()} for j in range(encode.rows_in(batch))]
    return preference_format.encode_pairs(spec, tokenizer, rows)


def _pairs(kept: dict):
    """The kept pairs as an Arrow table (answer_rows.fit's columns)."""
    import pyarrow as pa

    return pa.table({c: pa.array(kept[c], pa.list_(pa.int32())) for c in COLUMNS})


def _empty():
    import pyarrow as pa

    return pa.table({c: pa.array([], pa.list_(pa.int32())) for c in COLUMNS})


# ---------------------------------------------------------------- what the user is told


def removals(stats: dict) -> str:
    """One line: SFT's removal reasons plus the preference ones (prompt cuts, identical answers)."""
    parts = [] if report.removals(stats).startswith("no rows") else [report.removals(stats)]
    if stats.get("same_answers"):
        parts.append(
            f"skipped {report.count(stats['same_answers'], 'pairs')} whose two answers are identical"
        )
    if stats.get("prompt_truncated"):
        parts.append(
            f"cut {report.count(stats['prompt_truncated'], 'prompts')} to their last {stats.get('max_prompt_len')} tokens (max_prompt_len)"
        )
    return "; ".join(parts) or "no rows dropped, truncated or skipped"


def summary(stats: dict, folder, reused: bool) -> None:
    """data.prepare's report for preference tables: the SFT report in pairs (rl: kto: rows, and how many of
    each kind), with pair-specific removals."""
    kto = "desirable" in stats
    unit = "rows" if kto else "pairs"
    report.summary(stats, folder, reused, unit=unit, trained="in answers", describe=removals)
    if kto:
        report.new_console().print(f"data: {unpaired.describe(stats)}")


def examples(dataset, tokenizer, n: int) -> None:
    """`preprocess --inspect N`: each pair decoded, the prompt dim, chosen in green, rejected in red."""
    from rich.markup import escape

    if "completion_ids" in dataset.column_names:  # rl: kto
        return unpaired.examples(dataset, tokenizer, n)
    console = report.new_console()
    console.print("[bold]examples[/bold] (prompt dim; [green]⟦chosen⟧[/green]; [red]⟦rejected⟧[/red])")
    for i in range(min(n, len(dataset))):
        row = dataset[i]
        p, c, r = (row[k] for k in COLUMNS)
        console.rule(f"pair {i}: prompt {len(p)} tokens, chosen {len(c)}, rejected {len(r)}")
        prompt = escape(tokenizer.decode(p, skip_special_tokens=False))
        console.print(f"[dim]{prompt}[/dim]")
        console.print(f"[green]⟦{escape(tokenizer.decode(c, skip_special_tokens=False))}⟧[/green]")
        console.print(f"[red]⟦{escape(tokenizer.decode(r, skip_special_tokens=False))}⟧[/red]")
