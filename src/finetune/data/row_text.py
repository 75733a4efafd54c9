"""Token rows back to normalised text and words, for the data report, in numpy rather than per row in Python.

Decoding 100k rows with the tokenizer (`batch_decode`) took two minutes on this machine, mostly converting
ids to Python lists; here each token id's bytes are looked up once per tokenizer and rows are rebuilt with one
gather. That is exact for byte-level BPE (GPT-2, Llama 3, Qwen, SmolLM2: a row's bytes are its tokens' bytes
joined); other tokenizers are decoded by the Rust tokenizer (`decode_batch`), slower but the same text.
Normalisation (as for the exact-duplicate test): ASCII lower case, whitespace runs as one space, none at
the ends. Words are 64-bit hashes of their bytes, a row's text id the hash of its words: equal texts get
equal ids in every row set of a report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

_SPACE = np.zeros(256, bool)
_SPACE[[9, 10, 11, 12, 13, 32]] = True
_LOWER = np.arange(256, dtype=np.uint8)
_LOWER[65:91] += 32
_P = np.uint64(1099511628211)


@dataclass
class Words:
    """Rows as word hashes: `ids` flat, row r is ids[starts[r]:starts[r + 1]]; `text_ids` equal for equal texts."""

    ids: np.ndarray
    starts: np.ndarray
    text_ids: np.ndarray


def mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a stable, well-spread 64-bit hash of 64-bit integers."""
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint64(30))
        x = x * np.uint64(0xBF58476D1CE4E5B9)
        x = x ^ (x >> np.uint64(27))
        x = x * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def decode(tokenizer, values: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of token ids (row r: values[offsets[r]:offsets[r + 1]]) as UTF-8 bytes (flat, row starts),
    special tokens left out."""
    table = _byte_table(tokenizer)
    if table is None:
        rows = [values[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
        texts = tokenizer.backend_tokenizer.decode_batch(rows, skip_special_tokens=True)
        return from_texts(texts)
    flat, piece_starts = table
    values = values.astype(np.int64)
    lengths = np.diff(piece_starts)[values]
    out = np.concatenate([[0], np.cumsum(lengths)])
    gather = np.repeat(piece_starts[values] - out[:-1], lengths) + np.arange(out[-1])
    return flat[gather], out[offsets]


def from_texts(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    encoded = [t.encode() for t in texts]
    starts = np.concatenate([[0], np.cumsum([len(e) for e in encoded])]).astype(np.int64)
    return np.frombuffer(b"".join(encoded), np.uint8), starts


def text(flat: np.ndarray, starts: np.ndarray, row: int) -> str:
    return flat[starts[row] : starts[row + 1]].tobytes().decode(errors="replace")


def normalise(flat: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ASCII lower case, whitespace runs as one space, no space at a row's ends."""
    n_rows = len(starts) - 1
    b = _LOWER[flat]
    space = _SPACE[b]
    row = np.repeat(np.arange(n_rows), np.diff(starts))
    first = np.zeros(len(b), bool)
    first[starts[:-1][np.diff(starts) > 0]] = True
    keep = ~space | ~(first | np.concatenate([[True], space[:-1]]))  # a space after a space or at the start
    b, row, space = b[keep], row[keep], space[keep]
    last = np.concatenate([row[1:] != row[:-1], [True]]) if len(b) else np.zeros(0, bool)
    keep = ~(last & space)  # the one space left at a row's end
    b, row = np.where(space[keep], np.uint8(32), b[keep]), row[keep]
    return b, np.concatenate([[0], np.cumsum(np.bincount(row, minlength=n_rows))]).astype(np.int64)


def words(flat: np.ndarray, starts: np.ndarray) -> Words:
    """Normalised rows (see `normalise`) as word hashes and text ids."""
    n_rows = len(starts) - 1
    row = np.repeat(np.arange(n_rows), np.diff(starts))
    letter = flat != 32
    b, row = flat[letter].astype(np.uint64), row[letter]
    begins = np.concatenate([[True], ~letter[:-1]])[letter] if len(flat) else np.zeros(0, bool)
    if len(b):  # a row's first word begins at its first byte
        begins[np.concatenate([[0], np.flatnonzero(np.diff(row)) + 1])] = True
    word_at = np.flatnonzero(begins)
    pos = np.arange(len(b)) - np.repeat(word_at, np.diff(np.append(word_at, len(b))))
    with np.errstate(over="ignore"):
        h = _sums(
            (b + np.uint64(1)) * _powers(int(pos.max()) + 1 if len(pos) else 1)[pos],
            np.append(word_at, len(b)),
        )
    ids = mix(h)
    per_row = np.bincount(row[word_at], minlength=n_rows)
    word_starts = np.concatenate([[0], np.cumsum(per_row)]).astype(np.int64)
    return Words(ids, word_starts, _row_hashes(ids, word_starts))


def to_words(texts: list[str]) -> Words:
    """Texts (already decoded) as normalised words: `words(*normalise(...))`."""
    return words(*normalise(*from_texts(texts)))


def _row_hashes(ids: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """A hash of each row's words in order (0 for a row without words)."""
    pos = (np.arange(len(ids)) - np.repeat(starts[:-1], np.diff(starts))).astype(np.uint64)
    with np.errstate(over="ignore"):
        h = _sums(mix(ids + pos * _P), starts)
    return np.where(np.diff(starts) > 0, mix(h + np.diff(starts).astype(np.uint64)), np.uint64(0))


def _sums(values: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Wrapping uint64 sums of values[bounds[i]:bounds[i + 1]] (0 for an empty range)."""
    with np.errstate(over="ignore"):
        total = np.concatenate([np.zeros(1, np.uint64), np.cumsum(values, dtype=np.uint64)])
        return total[bounds[1:]] - total[bounds[:-1]]


@lru_cache(maxsize=8)
def _powers(n: int) -> np.ndarray:
    with np.errstate(over="ignore"):
        return np.cumprod(np.concatenate([[1], np.full(n - 1, _P)]).astype(np.uint64))


@lru_cache(maxsize=2)
def _byte_table(tokenizer) -> tuple[np.ndarray, np.ndarray] | None:
    """Every token id's bytes (flat, starts), special tokens empty; None unless the decoder is byte-level."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or (json.loads(backend.to_str()).get("decoder") or {}).get("type") != "ByteLevel":
        return None
    to_byte = {c: b for b, c in _bytes_to_unicode().items()}
    special = set(tokenizer.all_special_ids)
    pieces = []
    for i, piece in enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))):
        if i in special or piece is None:
            pieces.append(b"")
        elif all(c in to_byte for c in piece):
            pieces.append(bytes(to_byte[c] for c in piece))
        else:  # an added token: its text as is
            pieces.append(piece.encode())
    return _join(pieces)


def _join(pieces: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    starts = np.concatenate([[0], np.cumsum([len(p) for p in pieces])]).astype(np.int64)
    return np.frombuffer(b"".join(pieces), np.uint8), starts


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map (what byte-level BPE vocabularies are written in)."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))
