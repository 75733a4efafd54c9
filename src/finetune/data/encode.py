"""Run the formats over every source in batches (optionally in worker processes), then filter and count.

Batches go through `formats.encode_batch` and come back as Arrow record batches (int32 token lists), so
100k-row datasets stay compact in memory. Nothing raises inside a worker: bad rows carry an error text and
the first one is reported here by file and line, before anything is written. Rows that are too long are
dropped or truncated (excess_length_strategy), rows with nothing to train are skipped, and every removal
is counted in the stats.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import multiprocessing
import os
from collections import Counter
from contextlib import contextmanager

import numpy as np

from finetune.data import formats
from finetune.errors import UserError

BATCH = 1000
COUNTERS = (
    "rows_in", "rows_kept", "dropped_too_long", "dropped_too_short", "truncated", "empty_answer", "duplicates",
    "split_texts", "chunks",
)  # fmt: skip
_WORKER: tuple | None = None  # (work, state) of map_batches, inherited by forked workers


def encode_sources(sources, fmt: formats.Format, tokenizer, processes: int, progress=None):
    """Tokenized, filtered Arrow table (input_ids, attention_mask, labels) of these sources + counters."""
    import pyarrow as pa

    tables, counts = [], Counter({k: 0 for k in COUNTERS})
    for src in sources:
        batches = _run(src, fmt, tokenizer, processes, progress)
        table = pa.Table.from_batches(batches, schema=_schema()) if batches else _schema().empty_table()
        kept, source_counts = _filter(table, src, fmt)
        tables.append(kept)
        counts.update(source_counts)
    return (pa.concat_tables(tables) if tables else _empty()), counts


def entry_stats(where: str, ds, sources, counts: dict, table) -> dict:
    """One dataset entry's figures for the data report: rows and trained tokens before and after `weight`.

    Before weighting: rows read from the files; trained tokens of one copy of every kept row when the weight
    is 1 or more (the copies are identical), unknown below 1 (the rows left out were never tokenized).
    """
    tokens, trained = token_counts(table)
    once = counts.get("trained_once")
    return {
        "key": where,
        "path": ds.path,
        "weight": ds.weight,
        "rows_read": sum(src.rows_read if src.rows_read is not None else len(src.dataset) for src in sources),
        "rows_weighted": sum(len(src.dataset) for src in sources),
        "rows_kept": table.num_rows,
        "tokens": tokens,
        "trained_tokens": trained,
        "trained_tokens_before": trained if ds.weight == 1 else once if ds.weight > 1 else None,
        "removed": {k: int(counts[k]) for k in COUNTERS[2:] if counts.get(k)},
    }


def _schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("input_ids", pa.list_(pa.int32())),
            ("labels", pa.list_(pa.int32())),
            ("status", pa.int8()),
            ("error", pa.string()),
            ("truncated", pa.bool_()),
            ("trained", pa.int32()),
        ]
    )


def _empty():
    import pyarrow as pa

    return pa.table(
        {
            "input_ids": pa.array([], pa.list_(pa.int32())),
            "attention_mask": pa.array([], pa.list_(pa.int8())),
            "labels": pa.array([], pa.list_(pa.int32())),
        }
    )


def _encode_to_arrow(fmt, tokenizer, rows: dict):
    import pyarrow as pa

    if isinstance(fmt.spec, formats.TextSpec):
        return _text_to_arrow(fmt, tokenizer, rows)
    out = formats.encode_batch(fmt, tokenizer, rows)
    return pa.RecordBatch.from_pydict(out, schema=_schema())


def _text_to_arrow(fmt: formats.Format, tokenizer, rows: dict):
    """`formats.encode_batch` of a text format (the same ids, labels, counts and truncation; a test holds
    them equal), with the prompt and answer ids joined, masked and cut in numpy rather than as two Python
    lists a row converted to Arrow (a few CPU seconds on 100k rows; tokenizing itself is the rest)."""
    import pyarrow as pa

    n = rows_in(rows)
    records = [{k: v[i] for k, v in rows.items()} for i in range(n)]
    prompts, answers, status, errors = formats.text_pieces(fmt, tokenizer, records)
    status = np.array(status, np.int8)
    ok = status == formats.OK
    prompt_len = np.fromiter(map(len, prompts), np.int64, n) * ok  # rows not OK: no tokens
    full = prompt_len + np.fromiter(map(len, answers), np.int64, n) * ok
    parts = itertools.chain.from_iterable(itertools.chain.from_iterable(
        (prompts[i], answers[i]) for i in np.flatnonzero(ok)))  # fmt: skip
    flat = np.fromiter(parts, np.int32, int(full.sum()))
    truncated = ok & (full > fmt.sequence_len) if fmt.truncate else np.zeros(n, bool)
    length = np.where(truncated, fmt.sequence_len, full)
    row = np.repeat(np.arange(n), full)
    pos = np.arange(len(flat)) - np.repeat(np.cumsum(full) - full, full)
    keep = pos < length[row]
    trained = keep if fmt.train_on_inputs else keep & (pos >= prompt_len[row])
    labels = np.where(trained, flat, formats.IGNORE).astype(np.int32)
    offsets = pa.array(np.concatenate([[0], np.cumsum(length)]).astype(np.int32))
    columns = [
        pa.ListArray.from_arrays(offsets, pa.array(flat[keep])),
        pa.ListArray.from_arrays(offsets, pa.array(labels[keep])),
        pa.array(status),
        pa.array(errors, pa.string()),
        pa.array(truncated),
        pa.array(np.bincount(row[trained], minlength=n).astype(np.int32)),
    ]
    return pa.RecordBatch.from_arrays(columns, schema=_schema())


def _call_worker(batch):
    work, state = _WORKER
    return work(*state, batch)


@contextmanager
def _worker_state(work, state: tuple, processes: int):
    """Set the globals forked workers read; quiet the tokenizers fork warning while the pool lives."""
    global _WORKER
    _WORKER, saved = (work, state), os.environ.get("TOKENIZERS_PARALLELISM")
    if processes > 1:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        _WORKER = None
        if processes > 1:
            if saved is None:
                os.environ.pop("TOKENIZERS_PARALLELISM", None)
            else:
                os.environ["TOKENIZERS_PARALLELISM"] = saved


def map_batches(work, state: tuple, dataset, processes: int):
    """`work(*state, batch)` for every BATCH rows of `dataset`, in order: (rows in the batch, result) pairs.

    With processes > 1 the batches go to forked workers that inherit `state` (a tokenizer, a format) instead
    of pickling it per batch; a few batches per worker are in flight, so a large dataset is never read into
    Python all at once (Pool.imap alone would).
    """
    processes = max(1, min(processes, -(-len(dataset) // BATCH)))
    rows = dataset.iter(batch_size=BATCH)
    with _worker_state(work, state, processes):
        if processes == 1:
            for batch in rows:
                yield rows_in(batch), work(*state, batch)
            return
        with multiprocessing.get_context("fork").Pool(processes) as pool:
            while window := list(itertools.islice(rows, 4 * processes)):
                for batch, result in zip(window, pool.imap(_call_worker, window), strict=True):
                    yield rows_in(batch), result


def rows_in(batch: dict) -> int:
    """Rows in a column batch (column -> values), as `datasets` yields them."""
    return len(next(iter(batch.values()))) if batch else 0


def _run(src, fmt, tokenizer, processes: int, progress) -> list:
    task = (
        progress.add_task(f"tokenizing {os.path.basename(src.label)}", total=len(src.dataset))
        if progress
        else None
    )
    batches = []
    for n, batch in map_batches(_encode_to_arrow, (fmt, tokenizer), src.dataset, processes):
        batches.append(batch)
        if progress:
            progress.advance(task, n)
    return batches


def _filter(table, src, fmt: formats.Format):
    """Report the first bad row; drop too-long and nothing-to-train rows; count each reason."""
    import pyarrow.compute as pc

    status = table["status"].to_numpy()
    bad = np.flatnonzero(status == formats.ERROR)
    if bad.size:
        first = int(bad[0])
        raise UserError(f"{src.where(first)}: {table['error'][first].as_py()}")
    lengths = pc.list_value_length(table["input_ids"]).to_numpy(zero_copy_only=False)
    trained = table["trained"].to_numpy()
    truncated = table["truncated"].to_numpy(zero_copy_only=False)
    ok = status == formats.OK
    too_long = ok & (lengths > fmt.sequence_len)
    to_split = too_long & bool(fmt.chunk_step)  # completion: split into chunks, not dropped
    too_long = too_long & ~to_split
    cut_to_nothing = ok & truncated & (trained == 0)  # truncation left none of the answer
    nothing = ok & ~truncated & (trained == 0)
    too_short = ok & ~too_long & ~to_split & (lengths < fmt.min_len)  # min_sample_len
    keep = ok & ~too_long & ~to_split & ~cut_to_nothing & ~nothing & ~too_short
    kept = table.filter(keep).select(["input_ids", "labels"])
    chunks = _chunks(table.filter(to_split), fmt) if to_split.any() else None
    if chunks is not None:
        import pyarrow as pa

        kept = pa.concat_tables([kept, chunks])
    counts = {
        "trained_once": _trained_once(table, src, fmt, keep, to_split),
        "rows_in": len(status),
        "rows_kept": kept.num_rows,
        "dropped_too_long": int(too_long.sum() + cut_to_nothing.sum()),
        "dropped_too_short": int((too_short & ~cut_to_nothing & ~nothing).sum()),
        "truncated": int((keep & truncated).sum()),
        "empty_answer": int((status == formats.EMPTY).sum() + nothing.sum()),
        "duplicates": 0,
        "split_texts": int(to_split.sum()),
        "chunks": chunks.num_rows if chunks is not None else 0,
    }
    return kept.add_column(1, "attention_mask", _ones_like(kept["input_ids"])), counts


def _trained_once(table, src, fmt: formats.Format, keep, to_split) -> int:
    """Trained tokens of the kept rows of the first whole copy (weight >= 1: positions < rows_read)."""
    first = np.arange(len(keep)) < (src.rows_read if src.rows_read is not None else len(keep))
    trained = int(table["trained"].to_numpy()[keep & first].sum())
    if (to_split & first).any():
        trained += token_counts(_chunks(table.filter(to_split & first), fmt))[1]
    return trained


def _chunks(table, fmt: formats.Format):
    """Texts longer than sequence_len cut into chunks of sequence_len starting chunk_step apart (axolotl's
    completion strategy); a chunk under 2 tokens (or min_sample_len), or with nothing to train, is left out."""
    import pyarrow as pa

    ids_out, labels_out = [], []
    size, step, shortest = fmt.sequence_len, fmt.chunk_step, max(2, fmt.min_len)
    for ids, labels in zip(table["input_ids"].to_pylist(), table["labels"].to_pylist(), strict=True):
        for start in range(0, len(ids), step):
            piece = labels[start : start + size]
            if len(piece) >= shortest and any(t != formats.IGNORE for t in piece):
                ids_out.append(ids[start : start + size])
                labels_out.append(piece)
    return pa.table(
        {
            "input_ids": pa.array(ids_out, pa.list_(pa.int32())),
            "labels": pa.array(labels_out, pa.list_(pa.int32())),
        }
    )


def _ones_like(column):
    import pyarrow as pa
    import pyarrow.compute as pc

    lengths = (
        pc.list_value_length(column).to_numpy(zero_copy_only=False) if len(column) else np.zeros(0, np.int64)
    )
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(np.ones(int(offsets[-1]), np.int8)))


def deduplicate(table, against=None, row_hashes=None):
    """Drop exact repeats, keeping the first; with `against`, drop rows found there too.

    Rows are compared by `row_hashes(table)` (default: same tokens and labels).
    """
    row_hashes = row_hashes or _row_hashes
    seen = set(row_hashes(against)) if against is not None else set()
    keep = []
    for digest in row_hashes(table):
        keep.append(digest not in seen)
        seen.add(digest)
    mask = np.array(keep, dtype=bool)
    return table.filter(mask) if len(mask) else table, int((~mask).sum())


def _row_hashes(table):
    ids, labels = table["input_ids"].combine_chunks(), table["labels"].combine_chunks()
    id_values, id_offsets = ids.values.to_numpy(), ids.offsets.to_numpy()
    label_values, label_offsets = labels.values.to_numpy(), labels.offsets.to_numpy()
    for i in range(len(ids)):
        h = hashlib.blake2b(id_values[id_offsets[i] : id_offsets[i + 1]].tobytes(), digest_size=16)
        h.update(label_values[label_offsets[i] : label_offsets[i + 1]].tobytes())
        yield h.digest()


def split(table, val_set_size: float, seed: int, shuffle: bool):
    """Seeded shuffle, then a held-out set of val_set_size rows (a share when < 1): (train, eval or None)."""
    rng = np.random.default_rng(seed)
    n = table.num_rows
    if shuffle and n:
        table = table.take(rng.permutation(n))
    if not val_set_size:
        return table, None
    k = math.ceil(val_set_size * n) if val_set_size < 1 else int(val_set_size)
    if k >= n:
        raise UserError(f"val_set_size: {val_set_size:g} leaves no training rows ({n} rows after filtering)")
    held = np.zeros(n, dtype=bool)
    held[rng.choice(n, size=k, replace=False)] = True
    return table.filter(~held), table.filter(held)


def token_counts(table) -> tuple[int, int]:
    """(all tokens, trained tokens) of a table."""
    import pyarrow.compute as pc

    if table is None or table.num_rows == 0:
        return 0, 0
    labels = pc.list_flatten(table["labels"])
    return int(pc.sum(pc.list_value_length(table["input_ids"])).as_py()), int(
        pc.sum(pc.not_equal(labels, formats.IGNORE)).as_py() or 0
    )
