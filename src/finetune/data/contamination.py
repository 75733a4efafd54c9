"""Repeats and leaks in the data, on words of normalised text (row_text.py): exact duplicates, near-duplicates
(MinHash), and overlap of other rows (the eval split, an `--against` file) with the training rows (exact and
13-gram).

Every step is numpy over one flat array of word hashes: 100k rows of ~300 words take seconds. MinHash is
written here (32 hash functions of word 3-grams, 8 bands of 4) rather than taken from `datasketch` (a new
dependency, and a Python object per row): the signatures of all rows come from a few vectorised passes, and
stable hashes make the counts the same on every run.
"""

from __future__ import annotations

import numpy as np

from finetune.data.row_text import Words, mix

NGRAM = 13  # the contamination test's n-gram (GPT-3's, and the usual one since)
SHINGLE = 3  # MinHash shingles: word 3-grams
NEAR = 0.7  # estimated Jaccard similarity of shingles at or above which two rows are near-duplicates
HASHES, BANDS = 32, 8  # MinHash functions, LSH bands (of HASHES // BANDS hashes each)
STAR = 64  # an LSH bucket bigger than this links each row to its first row only (bounded work)
_M = np.uint64(0xFFFFFFFFFFFFFFFF)
_ODD = mix(np.arange(1, 2 * HASHES + 1, dtype=np.uint64)) | np.uint64(
    1
)  # per hash function: xor, odd multiplier


def ngrams(words: Words, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hash, row, start) of every n consecutive words inside a row (start: the first word's index in
    `words.ids`); rows shorter than n have none."""
    ids, starts = words.ids, words.starts
    rows = np.repeat(np.arange(len(starts) - 1), np.diff(starts))
    if len(ids) < n:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    spread = ids  # word hashes, well mixed already
    h = np.zeros(len(ids) - n + 1, np.uint64)
    with np.errstate(over="ignore"):
        for j in range(n):  # a polynomial over the spread word hashes, mixed once at the end
            h = h * np.uint64(1099511628211) + spread[j : len(ids) - n + 1 + j]
    h = mix(h)
    valid = rows[: len(h)] == rows[n - 1 :]  # the n words lie in one row
    return h[valid], rows[: len(h)][valid], np.flatnonzero(valid)


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
    """MinHash signatures (rows × HASHES) of each row's word 3-grams, leaving out those found more than
    max(10, 1%) of the rows' times: a prompt template or system text shared by many rows would otherwise make
    rows that differ only in their question near-duplicates. A row with no 3-gram left: its text as one."""
    n_rows = len(words.starts) - 1
    h, rows, _ = ngrams(words, SHINGLE)
    bucket = (h >> np.uint64(40)).astype(
        np.int64
    )  # counted in 2^24 buckets: a sort of every 3-gram costs more
    keep = np.bincount(bucket, minlength=1 << 24)[bucket] <= max(10, 0.01 * n_rows)
    h, rows = h[keep], rows[keep]
    short = np.flatnonzero(np.bincount(rows, minlength=n_rows) == 0)
    if short.size:  # the whole row as one shingle (its text id), so it still has a signature
        h, rows = np.concatenate([h, words.text_ids[short]]), np.concatenate([rows, short])
    order = np.argsort(rows, kind="stable")
    h, rows = h[order], rows[order]
    sig = np.full((n_rows, HASHES), _M, np.uint64)
    if not len(h):
        return sig
    present, starts = np.unique(rows, return_index=True)
    with np.errstate(over="ignore"):
        for k in range(HASHES):  # h is well mixed already: an xor and an odd multiply give the k-th hash
            v = (h ^ _ODD[2 * k]) * _ODD[2 * k + 1]
            sig[present, k] = np.minimum.reduceat(v ^ (v >> np.uint64(29)), starts)
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
            key = mix(key ^ band[:, j])
        order = np.argsort(key, kind="stable")
        edges = np.concatenate([[0], np.flatnonzero(np.diff(key[order])) + 1, [len(order)]])
        for k in np.flatnonzero(np.diff(edges) > 1):  # buckets of 2 rows or more (most rows are alone)
            members = candidates[np.sort(order[edges[k] : edges[k + 1]])]
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


def overlap(train: Words, other: Words, train_grams: tuple | None = None) -> dict:
    """How much of `other` (the eval split, an --against file) the training rows contain.

    exact_rows: rows whose normalised text is a training row's. ngram_rows: rows sharing a 13-gram of their
    own words with a training row. A prompt template or system text many rows carry is not a leak: a 13-gram
    found in more than max(10, 1%) of the training rows marks its words as template, and only 13-grams with
    no template word count (so "...choose an answer from {a/b/c}. Input: Net sales" is not a hit because
    two rows open with "Net sales"). Rows under 13 words take part in the exact test only (`short_rows`).
    `train_grams`: ngrams(train, NGRAM), when the caller has them already.
    """
    n = len(other.text_ids)
    exact = _member(other.text_ids, train.text_ids)
    o_hash, o_rows, o_start = ngrams(other, NGRAM)
    t_hash, t_rows, _ = train_grams if train_grams is not None else ngrams(train, NGRAM)
    hit = _member(t_hash, o_hash)  # only the grams `other` has matter: count their training rows
    flagged = np.zeros(n, bool)
    if hit.any():
        pairs = np.unique(np.stack([t_hash[hit], t_rows[hit].astype(np.uint64)]), axis=1)
        grams, in_rows = np.unique(pairs[0], return_counts=True)
        template = grams[in_rows > max(10, 0.01 * (len(train.starts) - 1))]
        covered = np.zeros(len(other.ids) + 1, np.int64)  # +1 where a template gram starts, -1 after it
        at = o_start[_member(o_hash, template)]
        np.add.at(covered, at, 1)
        np.add.at(covered, at + NGRAM, -1)
        is_template = np.concatenate([[0], np.cumsum(np.cumsum(covered)[:-1] > 0)])
        clean = is_template[o_start + NGRAM] == is_template[o_start]  # no template word in the gram
        flagged[np.unique(o_rows[clean & _member(o_hash, grams)])] = True
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


def _member(values: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """np.isin for a large `values` and a smaller `pool`: a binary search each, no sort of `values`."""
    pool, found = np.unique(pool), np.zeros(len(values), bool)
    if not len(pool):
        return found
    # a bitmap of the pool's top hash bits first: most values (every 13-gram of 100k training rows against
    # an eval split's) miss it, and only the few that hit are binary-searched
    shift = np.uint64(64 - min(26, max(8, int(len(pool)).bit_length() + 4)))
    bitmap = np.zeros(1 << (64 - int(shift)), bool)
    bitmap[(pool >> shift).astype(np.int64)] = True
    maybe = np.flatnonzero(bitmap[(values >> shift).astype(np.int64)])
    at = np.minimum(np.searchsorted(pool, values[maybe]), len(pool) - 1)
    found[maybe] = pool[at] == values[maybe]
    return found
