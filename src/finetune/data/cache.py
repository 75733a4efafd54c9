"""The prepared-data cache: `dataset_prepared_path/<fingerprint>/` holds the tokenized tables (`save_to_disk`),
the stats, and everything the tokens depend on (`finetune_inputs.json`, for humans and for `cached_stats`).
The fingerprint hashes the data files' bytes, the format settings, the tokenizer and its chat template,
sequence_len ..., so a changed config never reuses a stale cache, and an unchanged one never re-tokenizes.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune import methods
from finetune.config import Config, DatasetConfig
from finetune.data import preference, sources
from finetune.data.mistral_chat import tokenizer_file_digest
from finetune.data.report import no_datasets_bars
from finetune.data.tokenizer import is_mistral_common
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


def fingerprint(cfg: Config, tokenizer) -> str:
    """16 hex digits naming the cache folder of this config's tokens."""
    return digest(fingerprint_inputs(cfg, tokenizer))


def digest(inputs: dict) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]


def tokenizer_digest(tokenizer) -> str:
    """Vocabulary, merges, added tokens, post-processor (BOS/EOS rules), special tokens and chat template.

    The backend's padding/truncation state is left out: a call like `tokenizer(x, padding=True)` before
    `prepare` changes it without changing our tokens, and must not cost a cache miss.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if is_mistral_common(tokenizer):  # its file holds the vocabulary and the version that decides the format
        model = tokenizer_file_digest(tokenizer)
    elif backend is not None:
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


def as_dataset(table):
    import datasets
    from datasets.table import InMemoryTable

    return datasets.Dataset(InMemoryTable(table))


def save(folder: Path, train, eval_, stats: dict, inputs: dict) -> None:
    """Write the cache atomically: a reader sees a complete folder or none."""
    import datasets

    with no_datasets_bars(), atomic_dir(folder, overwrite=True) as tmp:
        if eval_ is None:
            as_dataset(train).save_to_disk(str(tmp))
        else:
            datasets.DatasetDict({"train": as_dataset(train), "validation": as_dataset(eval_)}).save_to_disk(
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
        train, eval_ = (without_source(t) for t in (train, eval_))
    return PreparedData(train, eval_, stats, folder)


def without_source(table):
    """A table (Arrow or datasets) without the `source` column, when it has one."""
    if table is None or SOURCE not in table.column_names:
        return table
    return (
        table.remove_columns([SOURCE]) if hasattr(table, "remove_columns") else table.drop_columns([SOURCE])
    )
