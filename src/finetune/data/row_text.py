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
        # no Rust backend: mistral-common's tokenizer (data/mistral_chat.py)
        backend = getattr(tokenizer, "backend_tokenizer", None)
        decode_batch = backend.decode_batch if backend is not None else tokenizer.batch_decode
        texts = decode_batch(rows, skip_special_tokens=True)
        return from_texts(texts)
    import pyarrow as pa
    import pyarrow.compute as pc

    tokens = pc.take(_binary(*table), pa.array(values))  # each token's bytes; then one join a row, in C++
    rows = pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), tokens)
    return _flat(pc.binary_join(rows, pa.scalar(b"", pa.large_binary())))


def _binary(flat: np.ndarray, starts: np.ndarray):
    """(flat bytes, row starts) as an Arrow large_binary array, without a copy of the bytes."""
    import pyarrow as pa

    starts = np.ascontiguousarray(starts, np.int64)
    buffers = [None, pa.py_buffer(starts - starts[0]), pa.py_buffer(flat[starts[0] : starts[-1]])]
    return pa.LargeBinaryArray.from_buffers(pa.large_binary(), len(starts) - 1, buffers)


def _flat(array) -> tuple[np.ndarray, np.ndarray]:
    """An Arrow large_binary array as (flat bytes, row starts from 0)."""
    _, offsets, data = array.buffers()
    starts = np.frombuffer(offsets, np.int64)[array.offset : array.offset + len(array) + 1]
    flat = np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8)
    return flat[starts[0] : starts[-1]], starts - starts[0]


def from_texts(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    encoded = [t.encode() for t in texts]
    starts = np.concatenate([[0], np.cumsum([len(e) for e in encoded])]).astype(np.int64)
    return np.frombuffer(b"".join(encoded), np.uint8), starts


def text(flat: np.ndarray, starts: np.ndarray, row: int) -> str:
    return flat[starts[row] : starts[row + 1]].tobytes().decode(errors="replace")


def normalise(flat: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ASCII lower case, whitespace runs as one space, no space at a row's ends.

    Whole-array passes, with no per-byte row number (an int64 a byte: 8 times the text's size).
    """
    b = _LOWER[flat]
    space = _SPACE[b]
    starts = np.asarray(starts, np.int64)
    after_space = np.concatenate([[True], space[:-1]])
    after_space[starts[:-1][np.diff(starts) > 0]] = True  # a row's first byte: as after a space
    keep = ~(space & after_space)  # a space after a space, or at a row's start
    kept_starts = np.concatenate([[0], np.cumsum(keep)])[starts]
    b, space = b[keep], space[keep]
    ends = kept_starts[1:]
    trailing = (
        (ends > kept_starts[:-1]) & space[np.maximum(ends - 1, 0)] if len(b) else np.zeros(len(ends), bool)
    )
    drop = np.ones(len(b), bool)
    drop[ends[trailing] - 1] = False  # the one space left at a row's end
    b = np.where(space, np.uint8(32), b)[drop]
    return b, kept_starts - np.concatenate([[0], np.cumsum(trailing)])


def words(flat: np.ndarray, starts: np.ndarray) -> Words:
    """Normalised rows (see `normalise`) as word hashes and text ids.

    Arrow splits the rows at spaces and numbers the distinct words (a hash table in C++); only the distinct
    words (tens of thousands, not millions) are hashed here, each word's hash then looked up by its number.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    n_rows = len(starts) - 1
    lists = pc.split_pattern(_binary(flat, starts), b" ")
    found = lists.flatten()
    row = np.repeat(np.arange(n_rows), np.diff(lists.offsets.to_numpy()))
    real = pc.binary_length(found).to_numpy(zero_copy_only=False) > 0  # an empty row splits into one ""
    coded = pc.dictionary_encode(found.filter(pa.array(real)))
    ids = _word_hashes(*_flat(coded.dictionary))[coded.indices.to_numpy(zero_copy_only=False)]
    word_starts = np.concatenate([[0], np.cumsum(np.bincount(row[real], minlength=n_rows))]).astype(np.int64)
    return Words(ids, word_starts, _row_hashes(ids, word_starts))


def _word_hashes(flat: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each word's bytes (word i: flat[starts[i]:starts[i + 1]])."""
    if not len(flat):
        return np.zeros(len(starts) - 1, np.uint64)
    lengths = np.diff(starts)
    pos = np.arange(len(flat)) - np.repeat(starts[:-1], lengths)
    with np.errstate(over="ignore"):
        values = (flat.astype(np.uint64) + np.uint64(1)) * _powers(int(lengths.max()))[pos]
        return mix(_sums(values, starts))


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
