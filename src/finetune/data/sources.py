"""Where rows come from: local files and folders, or hub datasets, all read with `datasets.load_dataset`.

Local data is loaded one file at a time so a bad row can be named by file and line. When a JSON file does
not load (a malformed line, a field whose type changes between rows), the file is scanned line by line to
name the first bad line; a hub dataset that cannot be reached fails with one line naming it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune import hub
from finetune.config import DatasetConfig
from finetune.errors import UserError

LOADERS = {
    ".jsonl": "json",
    ".json": "json",
    ".csv": "csv",
    ".parquet": "parquet",
    ".arrow": "arrow",
    ".txt": "text",
}


@dataclass
class Source:
    """One file (or one hub split) and its rows as a `datasets.Dataset`."""

    label: str  # what messages show: the file path or the hub id
    loader: str  # json, csv, parquet, arrow, text, or hub
    dataset: Any
    path: Path | None = None
    rows: Any = None  # after `weight`: the file's row index of each row of `dataset` (None: unweighted)
    rows_read: int | None = None  # rows in the file before `weight` (None: unweighted)

    def where(self, row: int) -> str:
        """`file.jsonl:LINE` for line-based files, `file.csv: row N` (0-based row index) otherwise."""
        if self.rows is not None:
            row = int(self.rows[row])
        if self.path is not None and self.loader == "json" and not _is_json_array(self.path):
            return f"{self.label}:{_jsonl_line(self.path, row)}"
        return f"{self.label}: row {row}"


def local_files(ds: DatasetConfig, where: str) -> list[tuple[Path, str]] | None:
    """(file, loader) pairs of a local `path:`, or None when `path` is a hub dataset id."""
    root = Path(ds.path).expanduser()
    if not root.exists():
        return None
    if root.is_file():
        candidates = [root]
    else:
        patterns = [ds.data_files] if isinstance(ds.data_files, str) else list(ds.data_files or [])
        if patterns:
            candidates = sorted({p for pattern in patterns for p in root.glob(pattern) if p.is_file()})
        else:
            candidates = sorted(
                p
                for p in root.rglob("*")
                if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in LOADERS
            )
        if not candidates:
            raise UserError(
                f"{where}.path: no data files in {ds.path} (looked for {', '.join(patterns) or ', '.join(LOADERS)})"
            )
    files = []
    for path in candidates:
        loader = ds.ds_type or LOADERS.get(path.suffix.lower())
        if loader is None:
            raise UserError(
                f"{where}.ds_type: cannot tell the format of {path} from its extension: set ds_type (json, csv, parquet, arrow, text)"
            )
        files.append((path, loader))
    return files


def load_sources(ds: DatasetConfig, where: str, seed: int = 0) -> list[Source]:
    """Every file of a dataset entry (or its hub split), loaded, and weighted by `ds.weight` (`weighted`)."""
    return weighted(_load(ds, where), ds.weight, seed, where)


def weight_rows(n: int, weight: float, seed: int, where: str):
    """The row indices an entry of n rows keeps under `weight`: round(weight × n) of them.

    Below 1, a seeded random round(weight × n) rows; above 1, int(weight) whole copies, then a seeded random
    round((weight - int(weight)) × n) rows. Each part is in file order. The generator is seeded by `seed`
    and the entry's key path, so two entries with the same weight draw different rows, and a rerun the same.
    """
    import numpy as np

    rng = np.random.default_rng([seed, zlib.crc32(where.encode())])
    whole = int(weight)
    extra = round((weight - whole) * n)
    part = np.sort(rng.choice(n, size=extra, replace=False)) if extra else np.zeros(0, np.int64)
    return np.concatenate([np.tile(np.arange(n), whole), part]).astype(np.int64)


def weighted(sources: list[Source], weight: float, seed: int, where: str) -> list[Source]:
    """The entry's sources with `weight` applied over all their rows together (one draw per entry)."""
    if weight == 1:
        return sources
    import numpy as np

    sizes = [len(src.dataset) for src in sources]
    picks = weight_rows(sum(sizes), weight, seed, where)
    out, start = [], 0
    for src, size in zip(sources, sizes, strict=True):
        mine = picks[(picks >= start) & (picks < start + size)] - start  # copies first, then the share
        out.append(Source(src.label, src.loader, src.dataset.select(mine), src.path, np.asarray(mine), size))
        start += size
    return out


def _load(ds: DatasetConfig, where: str) -> list[Source]:
    import datasets

    files = local_files(ds, where)
    if files is None:
        try:
            table = datasets.load_dataset(
                ds.path, name=ds.name, split=ds.split, data_files=ds.data_files, revision=ds.revision
            )
        except Exception as exc:  # offline, unknown id, missing split: one line naming the dataset
            offline = " (offline: HF_HUB_OFFLINE is set)" if hub.is_offline() else ""
            raise UserError(
                f"{where}.path: cannot load dataset {ds.path!r}{offline}: not a local file or folder, and the "
                f"Hugging Face hub did not provide it ({_first_line(exc)})"
            ) from None
        return [Source(ds.path, "hub", table)]
    sources = []
    for path, loader in files:
        try:
            with _quiet_datasets():
                table = datasets.load_dataset(loader, data_files=[str(path)], split="train")
        except Exception as exc:  # malformed file: find the line when we can
            problem = _json_problem(path) if loader == "json" else None
            if path.stat().st_size == 0:
                problem = f"{path}: the file is empty"
            raise UserError(problem or f"{path}: cannot read it as {loader} ({_first_line(exc)})") from None
        sources.append(Source(str(path), loader, table, path))
    return sources


def content_digest(ds: DatasetConfig, where: str) -> str:
    """sha256 of the data files' bytes (a hub dataset: its id, config, split and revision)."""
    digest = hashlib.sha256()
    files = local_files(ds, where)
    if files is None:
        digest.update(json.dumps([ds.path, ds.name, ds.split, ds.data_files, ds.revision]).encode())
        return digest.hexdigest()
    for path, loader in files:
        digest.update(f"{path.name}\0{loader}\0".encode())
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def _quiet_datasets():
    """datasets logs its own multi-line error before raising; ours (one line) replaces it."""
    logger = logging.getLogger("datasets")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


# ---------------------------------------------------------------- naming the bad line of a JSON file


def _first_line(exc: BaseException) -> str:
    cause = exc
    while cause.__cause__ is not None or cause.__context__ is not None:  # datasets wraps the real error
        cause = cause.__cause__ or cause.__context__
    text = str(cause).strip() or cause.__class__.__name__
    return text.splitlines()[0][:200]


def _is_json_array(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(4096).lstrip()
    return head.startswith(b"[")


def _jsonl_line(path: Path, row: int) -> int:
    """1-based line number of the row-th non-blank line."""
    seen = -1
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                seen += 1
                if seen == row:
                    return number
    return row + 1


def _kind(value) -> str:
    return {
        bool: "true/false",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "an object",
    }.get(type(value), type(value).__name__)


def _json_problem(path: Path) -> str | None:
    """The first line that breaks a JSON(L) file: invalid JSON, or not an object.

    (A field whose type changes between rows loads fine: datasets 5 keeps it as Json; a non-string value
    in a field the format reads is then reported by the row check, with its line.)
    """
    try:
        if _is_json_array(path):
            try:
                json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                return f"{path}:{exc.lineno}: invalid JSON ({exc.msg}, column {exc.colno})"
            return None
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    return f"{path}:{number}: invalid JSON ({exc.msg}, column {exc.colno})"
                if not isinstance(row, dict):
                    return f"{path}:{number}: expected one JSON object per line, got {_kind(row)}"
    except UnicodeDecodeError as exc:
        return f"{path}: not UTF-8 text (byte {exc.start})"
    return None
