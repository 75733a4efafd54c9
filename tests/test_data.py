"""The data stage end to end: formats -> exact tokens and labels, filtering counts, the cache, bad rows."""

from __future__ import annotations

import json

import pytest

from finetune import config, data
from finetune.errors import UserError
from finetune.formats import IGNORE
from finetune.tokenizer import load_tokenizer

from conftest import FINLORA, needs_shared

INST = {
    "field_instruction": "context",
    "field_output": "target",
    "format": "[INST] {instruction} [/INST]",
    "no_input_format": "[INST] {instruction} [/INST]",
    "system_prompt": "",
    "field_system": "system",
}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def make_cfg(tiny_model_dir, tmp_path, datasets, **extra):
    raw = {
        "base_model": str(tiny_model_dir),
        "adapter": "lora",
        "datasets": datasets,
        "sequence_len": 512,
        "dataset_prepared_path": str(tmp_path / "prepared"),
        "dataset_processes": 1,
        **extra,
    }
    return config.validate(raw)


def trained(row, tokenizer) -> str:
    return tokenizer.decode([t for t in row["labels"] if t != IGNORE], skip_special_tokens=False)


def masked(row, tokenizer) -> str:
    ids = [t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label == IGNORE]
    return tokenizer.decode(ids, skip_special_tokens=False)


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return load_tokenizer(
        config.validate({"base_model": str(tiny_model_dir), "adapter": "lora", "datasets": [{"path": "x/y"}]})
    )


def test_custom_format_trains_exactly_answer_plus_eos(tiny_model_dir, tmp_path, tok):
    rows = [
        {"context": "Question: what is ROE?", "target": "Return on equity."},
        {"context": "Sentiment?", "target": "neutral"},
    ]
    cfg = make_cfg(
        tiny_model_dir,
        tmp_path,
        [{"path": str(write_jsonl(tmp_path / "d.jsonl", rows)), "type": INST}],
        shuffle_merged_datasets=False,
    )
    prepared = data.prepare(cfg, tok)
    assert prepared.stats["rows_kept"] == 2 and prepared.eval is None
    for row, src in zip(prepared.train, rows, strict=True):
        assert trained(row, tok) == src["target"] + "<|eot_id|>"
        assert masked(row, tok) == f"<|begin_of_text|>[INST] {src['context']} [/INST]"
        assert row["attention_mask"] == [1] * len(row["input_ids"])
        assert row["input_ids"].count(tok.bos_token_id) == 1
