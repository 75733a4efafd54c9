"""The data report's figures: what the prepared training and eval sets hold, from the cache and the tokenizer
alone (no model). `finetune data` writes them (report_files.py); `train` prints three lines of them.

Per source (dataset entry): rows read, weighted, kept, and every reason rows were removed; trained and masked
tokens; length percentiles against sequence_len and a histogram; for short label-like answers, the labels.
Over the training rows: exact duplicates (normalised text) and near-duplicates (MinHash), within and across
sources. Overlap of the eval split and of each `--against` file with the training rows (contamination.py).
`rows(analysis, ...)` gives the same figures per row, for a data preview.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from finetune.config import Config
from finetune.data import (
    SOURCE,
    contamination,
    encode,
    formats,
    load_prepared,
    no_datasets_bars,
    row_text,
    sources,
)
from finetune.data.rows import IGNORE
from finetune.errors import UserError

LABEL_WORDS, LABEL_SHARE, LABEL_KINDS = (
    3,
    0.95,
    50,
)  # answers of <= 3 words in 95% of rows, <= 50 kinds: labels
HIST_BINS = 40


@dataclass
class Split:
    """One row set (train, eval, an --against file): its tokens, texts and per-row figures."""

    name: str
    source: np.ndarray  # entry index per row (-1: not from an entry)
    length: np.ndarray
    trained: np.ndarray
    text: tuple[np.ndarray, np.ndarray]  # normalised full text: UTF-8 bytes (flat, row starts), row_text.py
    answer: list[str]  # the trained text, stripped
    words: row_text.Words


@dataclass
class Analysis:
    report: dict
    train: Split
    eval: Split | None
    exact_of: np.ndarray  # per train row: the first train row with the same text
    near_of: np.ndarray  # per train row: the first row of its near-duplicate cluster
    in_eval: np.ndarray  # per train row: its text is an eval row's
    in_against: dict[str, np.ndarray] = field(default_factory=dict)  # per --against file, per train row


def analyse(cfg: Config, tokenizer, folder: Path, against: list[str] | tuple = ()) -> Analysis:
    """Every figure of the data report for the prepared data in `folder` (written by data.prepare)."""
    prepared = load_prepared(folder, with_source=True)
    stats = prepared.stats
    if SOURCE not in prepared.train.column_names:
        raise UserError(f"{folder}: not a supervised (SFT) data cache: the data report reads SFT data only")
    train = _split("train", prepared.train.data.table, tokenizer)
    eval_ = _split("eval", prepared.eval.data.table, tokenizer) if prepared.eval is not None else None
    others = [_against_split(cfg, tokenizer, path) for path in against]

    exact_of = contamination.exact_groups(train.words.text_ids)
    firsts = np.flatnonzero(exact_of == np.arange(len(exact_of)))
    near_of = contamination.near_groups(contamination.signatures(train.words), firsts)
    overlaps, grams = {}, contamination.ngrams(train.words, contamination.NGRAM)
    if eval_ is not None and len(eval_.length):
        overlaps["eval"] = contamination.overlap(train.words, eval_.words, grams)
    for path, other in zip(against, others, strict=True):
        overlaps[str(path)] = contamination.overlap(train.words, other.words, grams)

    entries = stats.get("sources") or []
    test_entries = (stats.get("test_datasets") or {}).get("sources") or []
    total_trained = int(train.trained.sum())
    report = {
        "prepared": str(folder),
        "sequence_len": cfg.sequence_len,
        "excess_length_strategy": cfg.excess_length_strategy,
        "train": _totals(train),
        "eval": _totals(eval_) if eval_ is not None else None,
        "eval_from": "test_datasets" if cfg.test_datasets else ("val_set_size" if cfg.val_set_size else None),
        "removed": {k: stats[k] for k in encode.COUNTERS[2:] if stats.get(k)},
        "sources": [
            _source(e, i, train, eval_ if not cfg.test_datasets else None, total_trained)
            for i, e in enumerate(entries)
        ]
        + [_source(e, i, None, eval_, None) for i, e in enumerate(test_entries)],
        "exact_duplicates": contamination.count_repeats(exact_of, train.source),
        "near_duplicates": {
            **contamination.count_repeats(near_of, train.source),
            "threshold": contamination.NEAR,
        },
        "overlap": {
            "eval": _public(overlaps.get("eval")),
            "against": [{"file": str(p), **_public(overlaps[str(p)])} for p in against],
        },
        "histogram": _histogram(train, len(entries), cfg.sequence_len),
    }
    in_eval = np.isin(train.words.text_ids, eval_.words.text_ids) if eval_ is not None else np.zeros(0, bool)
    in_against = {
        str(p): np.isin(train.words.text_ids, o.words.text_ids) for p, o in zip(against, others, strict=True)
    }
    return Analysis(report, train, eval_, exact_of, near_of, in_eval, in_against)


def rows(analysis: Analysis, tokenizer, start: int = 0, limit: int = 50) -> list[dict]:
    """Per training row, what the report counts (a data preview's table): source, tokens, trained and masked
    tokens, the answer, the first row it repeats exactly or nearly (None when none), whether it is an eval row
    or an --against file's row; and the row's text."""
    train, keys = analysis.train, [s["key"] for s in analysis.report["sources"]]
    out = []
    for i in range(start, min(start + limit, len(train.length))):
        out.append(
            {
                "row": i,
                "source": keys[train.source[i]] if 0 <= train.source[i] < len(keys) else None,
                "tokens": int(train.length[i]),
                "trained_tokens": int(train.trained[i]),
                "masked_tokens": int(train.length[i] - train.trained[i]),
                "answer": train.answer[i],
                "exact_duplicate_of": int(analysis.exact_of[i]) if analysis.exact_of[i] != i else None,
                "near_duplicate_of": int(analysis.near_of[i]) if analysis.near_of[i] != i else None,
                "in_eval": bool(analysis.in_eval[i]) if len(analysis.in_eval) else False,
                "in_against": [p for p, hit in analysis.in_against.items() if hit[i]],
                "text": row_text.text(*train.text, i),
            }
        )
    return out


# ---------------------------------------------------------------- the pieces


def _split(name: str, table, tokenizer) -> Split:
    """Lengths, trained counts, normalised texts and answers of a token table (decoded once, in batches)."""
    ids, labels = table["input_ids"].combine_chunks(), table["labels"].combine_chunks()
    offsets = ids.offsets.to_numpy()
    length = np.diff(offsets)
    label_values = labels.values.to_numpy()
    keep = label_values != IGNORE
    counted = np.concatenate([[0], np.cumsum(keep)])
    trained = counted[labels.offsets.to_numpy()[1:]] - counted[labels.offsets.to_numpy()[:-1]]
    answers_flat, answer_ends = label_values[keep], np.cumsum(trained)
    text = row_text.normalise(*row_text.decode(tokenizer, ids.values.to_numpy(), offsets))
    answer_bytes, answer_starts = row_text.decode(tokenizer, answers_flat, np.concatenate([[0], answer_ends]))
    answer = [row_text.text(answer_bytes, answer_starts, i).strip() for i in range(len(trained))]
    source = (
        table[SOURCE].to_numpy().astype(np.int64)
        if SOURCE in table.column_names
        else np.full(len(length), -1)
    )
    words = row_text.words(*text)
    return Split(name, source, length.astype(np.int64), trained.astype(np.int64), text, answer, words)


def _against_split(cfg: Config, tokenizer, path) -> Split:
    """An --against file's rows in datasets[0]'s format, whole: no length limit, nothing truncated."""
    where = f"--against {path}"
    if not Path(path).is_file():
        raise UserError(f"{where}: no such file")
    local = {
        "path": str(path),
        "data_files": None,
        "ds_type": None,
        "split": "train",
        "name": None,
        "revision": None,
    }
    ds = cfg.datasets[0].model_copy(update={**local, "weight": 1.0})
    fmt = formats.build_format(cfg, ds, where, tokenizer)
    fmt = dataclasses.replace(fmt, sequence_len=1 << 30, truncate=False, min_len=0, chunk_step=0)
    with no_datasets_bars():
        table, _ = encode.encode_sources(sources.load_sources(ds, where), fmt, tokenizer, 1)
    return _split(str(path), table, tokenizer)


def _totals(split: Split) -> dict:
    trained = int(split.trained.sum())
    return {"rows": len(split.length), "tokens": int(split.length.sum()), "trained_tokens": trained,
            "masked_tokens": int(split.length.sum()) - trained, "lengths": length_summary(split.length)}  # fmt: skip


def length_summary(lengths: np.ndarray) -> dict | None:
    """min, mean, p50/p90/p99 and max of rows' token lengths (None for no rows): the report's length line."""
    if not len(lengths):
        return None
    p50, p90, p99 = (float(x) for x in np.percentile(lengths, [50, 90, 99]))
    return {"min": int(lengths.min()), "mean": round(float(lengths.mean()), 1), "p50": p50, "p90": p90,
            "p99": p99, "max": int(lengths.max())}  # fmt: skip


def _source(entry: dict, index: int, train: Split | None, eval_: Split | None, total: int | None) -> dict:
    """One entry's figures: from the data stage's counts, and from its rows in the train / eval sets."""
    out = {k: v for k, v in entry.items() if k != "removed"}
    out["removed"] = entry.get("removed", {})
    out["over_sequence_len"] = sum(
        out["removed"].get(k, 0) for k in ("dropped_too_long", "truncated", "split_texts")
    )
    mine = {name: s.source == index for name, s in (("train", train), ("eval", eval_)) if s is not None}
    for name, s in (("train", train), ("eval", eval_)):
        if s is not None:
            out[f"rows_in_{name}"] = int(mine[name].sum())
    for name in ("train", "eval"):
        out.setdefault(f"rows_in_{name}", 0)
    rows_split = train if train is not None else eval_
    sel = mine["train" if train is not None else "eval"]
    out["masked_tokens"] = int(entry.get("tokens", 0)) - int(entry.get("trained_tokens", 0))
    out["lengths"] = length_summary(rows_split.length[sel])
    if total is not None:
        out["share_of_trained_tokens"] = (
            round(int(rows_split.trained[sel].sum()) / total, 4) if total else 0.0
        )
    out["labels"] = _labels([a for a, m in zip(rows_split.answer, sel, strict=True) if m])
    return out


def _labels(answers: list[str]) -> dict | None:
    """The answers' distribution when they look like labels (short, few kinds), else None."""
    if not answers:
        return None
    short = sum(1 for a in answers if len(a.split()) <= LABEL_WORDS)
    kinds = Counter(answers)
    if short < LABEL_SHARE * len(answers) or len(kinds) > LABEL_KINDS or len(kinds) > len(answers) / 2:
        return None
    return dict(kinds.most_common())


def _histogram(train: Split, entries: int, sequence_len: int) -> dict:
    top = max(sequence_len, int(train.length.max()) if len(train.length) else 1)
    edges = np.linspace(0, top, HIST_BINS + 1).round().astype(int)
    counts = {
        str(i): np.histogram(train.length[train.source == i], bins=edges)[0].tolist() for i in range(entries)
    }
    return {"edges": edges.tolist(), "counts": counts}


def _public(found: dict | None) -> dict | None:
    """An overlap's figures without its per-row arrays."""
    return None if found is None else {k: v for k, v in found.items() if not isinstance(v, np.ndarray)}


def overlap_table_rows(found: dict) -> list[str]:
    """The Markdown rows of the overlap table (eval split, then each --against file), for SFT rows and pairs alike."""
    checks = [("eval split", found["overlap"]["eval"])] + [
        (f"`{a['file']}`", a) for a in found["overlap"]["against"]
    ]
    return [
        f"| {what} | {o['rows']:,} | {o['exact_rows']:,} | {o['ngram_rows']:,} ({o['ngram_share']:.1%}) | {o['short_rows']:,} |"
        for what, o in checks
        if o
    ]
