"""Repeats and leaks in the data, on words of normalised text: exact duplicates, near-duplicates (MinHash),
and overlap of other rows (the eval split, an `--against` file) with the training rows (exact and 13-gram).

Text is normalised the same everywhere: lower case, whitespace runs collapsed to one space. Words are mapped
to integer ids once per report, so every step after that is numpy over one flat array: 100k rows of ~200
words take seconds, not minutes. MinHash is written here (32 hash functions of word 3-grams, 8 bands of 4) rather
than taken from `datasketch`: the signatures of all rows are computed in a few vectorised passes, and stable
hashes make the counts the same on every run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

NGRAM = 13  # the contamination test's n-gram (GPT-3's, and the usual one since)
SHINGLE = 3  # MinHash shingles: word 3-grams
NEAR = 0.7  # estimated Jaccard similarity of shingles at or above which two rows are near-duplicates
HASHES, BANDS = 32, 8  # MinHash functions, LSH bands (of HASHES // BANDS hashes each)
STAR = 64  # an LSH bucket bigger than this links each row to its first row only (bounded work)
_SPACE = re.compile(r"\s+")
_M = np.uint64(0xFFFFFFFFFFFFFFFF)


def normalise(text: str) -> str:
    """Lower case, whitespace runs as one space, no space at the ends."""
    return _SPACE.sub(" ", text).strip().lower()


@dataclass
class Words:
    """Rows as word ids: `ids` flat, row r is ids[starts[r]:starts[r + 1]]; `text_ids` numbers equal texts."""

    ids: np.ndarray
    starts: np.ndarray
    text_ids: np.ndarray


def to_words(texts: list[str], vocab: dict[str, int], seen: dict[str, int]) -> Words:
    """Normalised texts as word ids; `vocab` (word -> id) and `seen` (text -> id) are shared between the
    row sets of one report, so the same word or text gets the same id in all of them."""
    split = [t.split(" ") if t else [] for t in texts]
    lengths = np.fromiter((len(w) for w in split), np.int64, len(split))
    flat = [vocab.setdefault(w, len(vocab)) for words in split for w in words]
    text_ids = np.fromiter((seen.setdefault(t, len(seen)) for t in texts), np.int64, len(texts))
    starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return Words(np.asarray(flat, np.uint64), starts, text_ids)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a stable, well-spread 64-bit hash of 64-bit integers."""
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint64(30))
        x = x * np.uint64(0xBF58476D1CE4E5B9)
        x = x ^ (x >> np.uint64(27))
        x = x * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def ngrams(words: Words, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(hash, row) of every n consecutive words inside a row; rows shorter than n have none."""
    ids, starts = words.ids, words.starts
    rows = np.repeat(np.arange(len(starts) - 1), np.diff(starts))
    if len(ids) < n:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    spread = _mix(ids + np.uint64(1))
    h = np.zeros(len(ids) - n + 1, np.uint64)
    with np.errstate(over="ignore"):
        for j in range(n):  # a polynomial over the spread word hashes, mixed once at the end
            h = h * np.uint64(1099511628211) + spread[j : len(ids) - n + 1 + j]
    h = _mix(h)
    valid = rows[: len(h)] == rows[n - 1 :]  # the n words lie in one row
    return h[valid], rows[: len(h)][valid]


# ---------------------------------------------------------------- duplicates


def exact_groups(text_ids: np.ndarray) -> np.ndarray:
    """For each row, the first row with the same text (itself when it is the first)."""
    _, first, inverse = np.unique(text_ids, return_index=True, return_inverse=True)
    return first[inverse]


def count_repeats(first_of: np.ndarray, sources: np.ndarray) -> dict:
    """Rows that repeat an earlier row (exact or near), split by whether the first one is from the same entry."""
    repeat = first_of != np.arange(len(first_of))
    across = repeat & (sources != sources[first_of])
    return {"rows": int(repeat.sum()), "within_source": int((repeat & ~across).sum()), "across_sources": int(across.sum())}  # fmt: skip


def signatures(words: Words) -> np.ndarray:
    """MinHash signatures (rows × HASHES) of each row's word 3-grams (a shorter row: its words as one)."""
    n_rows = len(words.starts) - 1
    h, rows = ngrams(words, SHINGLE)
    short = np.flatnonzero(np.diff(words.starts) < SHINGLE)
    if short.size:  # the whole short row as one shingle, so it still has a signature
        spread = np.concatenate([_mix(words.ids + np.uint64(1)), np.zeros(1, np.uint64)])
        with np.errstate(over="ignore"):
            whole = np.add.reduceat(spread, words.starts[:-1])[short]  # an empty row: 0
        h, rows = np.concatenate([h, _mix(whole)]), np.concatenate([rows, short])
    order = np.argsort(rows, kind="stable")
    h, rows = h[order], rows[order]
    sig = np.full((n_rows, HASHES), _M, np.uint64)
    if not len(h):
        return sig
    present, starts = np.unique(rows, return_index=True)
    for k in range(HASHES):
        v = _mix(h ^ _mix(np.full(1, k + 1, np.uint64))[0])
        sig[present, k] = np.minimum.reduceat(v, starts)
    return sig


def near_groups(sig: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """For each row, the first row of its near-duplicate cluster (itself when none), over `candidates` only
    (the first row of each exact group: exact repeats are counted apart). LSH proposes pairs, the
    signatures confirm them (estimated Jaccard >= NEAR), union-find joins them."""
    parent = np.arange(len(sig))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    width = HASHES // BANDS
    sub = sig[candidates]
    for b in range(BANDS):
        band = sub[:, b * width : (b + 1) * width]
        key = band[:, 0]
        for j in range(1, width):
            key = _mix(key ^ band[:, j])
        order = np.argsort(key, kind="stable")
        bounds = np.flatnonzero(np.diff(key[order])) + 1
        for bucket in np.split(order, bounds):
            if len(bucket) < 2:
                continue
            members = candidates[np.sort(bucket)]
            pairs = (
                [(members[0], m) for m in members[1:]]
                if len(members) > STAR
                else [(a, c) for i, a in enumerate(members) for c in members[i + 1 :]]
            )
            for a, c in pairs:
                if (sig[a] == sig[c]).mean() >= NEAR:
                    ra, rc = find(a), find(c)
                    if ra != rc:
                        parent[max(ra, rc)] = min(ra, rc)
    return np.array([find(i) for i in range(len(sig))], np.int64)


# ---------------------------------------------------------------- overlap with the training rows


def overlap(train: Words, other: Words) -> dict:
    """How much of `other` (the eval split, an --against file) the training rows contain.

    exact_rows: rows whose normalised text is a training row's. ngram_rows: rows sharing at least one word
    13-gram with a training row, leaving out 13-grams found in more than max(5, 10%) of the training rows
    (a prompt template or a system text every row carries is not a leak). Rows under 13 words take part in
    the exact test only (`short_rows`).
    """
    n = len(other.text_ids)
    exact = np.isin(other.text_ids, train.text_ids)
    o_hash, o_rows = ngrams(other, NGRAM)
    t_hash, t_rows = ngrams(train, NGRAM)
    hit = np.isin(t_hash, o_hash)
    shared = np.unique(np.stack([t_hash[hit], t_rows[hit].astype(np.uint64)]), axis=1) if hit.any() else None
    flagged = np.zeros(n, bool)
    if shared is not None:
        grams, in_rows = np.unique(shared[0], return_counts=True)
        limit = max(5, 0.1 * (len(train.starts) - 1))
        leaks = grams[in_rows <= limit]
        flagged[np.unique(o_rows[np.isin(o_hash, leaks)])] = True
    short = np.diff(other.starts) < NGRAM
    return {
        "rows": n,
        "exact_rows": int(exact.sum()),
        "ngram_rows": int(flagged.sum()),
        "ngram_share": round(float(flagged.sum()) / n, 4) if n else 0.0,
        "short_rows": int(short.sum()),
        "exact": exact,  # per row (dropped from the JSON by the caller)
        "ngram": flagged,
    }
