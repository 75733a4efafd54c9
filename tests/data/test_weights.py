"""`datasets[].weight`: a seeded share of an entry's rows below 1, whole copies plus a seeded share above 1,
exact to round(weight × rows), the same on every run and cache hit, in the fingerprint, and in the report."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from finetune import config, data
from finetune.config import ConfigError
from finetune.data import report, sources
from finetune.data.tokenizer import load_tokenizer

INST = {"field_instruction": "q", "field_output": "a", "format": "{instruction} ="}


def write_source(path: Path, tag: str, n: int) -> Path:
    path.write_text(
        "".join(json.dumps({"q": f"{tag} question {i}", "a": f"{tag}{i}"}) + "\n" for i in range(n))
    )
    return path


def three_sources(tmp_path: Path, weights=(0.25, 1, 2.5)) -> list[dict]:
    sizes = {"a": 40, "b": 30, "c": 20}
    return [
        {"path": str(write_source(tmp_path / f"{tag}.jsonl", tag, n)), "type": INST, "weight": w}
        for (tag, n), w in zip(sizes.items(), weights, strict=True)
    ]


def make_cfg(tiny_model_dir, tmp_path, datasets, prepared="prepared", **extra):
    return config.validate(
        {
            "base_model": str(tiny_model_dir),
            "adapter": "lora",
            "datasets": datasets,
            "sequence_len": 128,
            "dataset_prepared_path": str(tmp_path / prepared),
            "dataset_processes": 1,
            **extra,
        }
    )


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    raw = {"base_model": str(tiny_model_dir), "adapter": "lora", "datasets": [{"path": "org/data"}]}
    return load_tokenizer(config.validate(raw))


def answers(prepared, tok) -> Counter:
    """How many times each row's answer is in the training set (the answer names its source and row)."""
    from finetune.data.rows import IGNORE

    texts = [
        tok.decode([t for t in labels if t != IGNORE], skip_special_tokens=True)
        for labels in prepared.train["labels"]
    ]
    return Counter(t.strip() for t in texts)


def test_weight_rule_is_exact_and_seeded():
    for n, w in ((40, 0.25), (30, 1), (20, 2.5), (7, 0.5), (9, 3)):
        picks = sources.weight_rows(n, w, seed=42, where="datasets[0]")
        assert len(picks) == round(w * n)
        counts = np.bincount(picks, minlength=n)
        assert counts.min() >= int(w) and counts.max() <= int(w) + (w != int(w))
        assert (sources.weight_rows(n, w, 42, "datasets[0]") == picks).all()
    # another seed or another entry draws other rows
    a = sources.weight_rows(100, 0.5, 42, "datasets[0]")
    assert not np.array_equal(a, sources.weight_rows(100, 0.5, 43, "datasets[0]"))
    assert not np.array_equal(a, sources.weight_rows(100, 0.5, 42, "datasets[1]"))


def test_three_sources_row_counts_exact_and_identical_across_runs(tiny_model_dir, tmp_path, tok, capsys):
    datasets = three_sources(tmp_path)
    first = data.prepare(make_cfg(tiny_model_dir, tmp_path, datasets), tok)
    out = capsys.readouterr().out
    count = answers(first, tok)
    by_source = {tag: sum(v for k, v in count.items() if k.startswith(tag)) for tag in "abc"}
    assert by_source == {"a": 10, "b": 30, "c": 50}  # round(0.25×40), 30, round(2.5×20)
    assert first.stats["rows_in"] == first.stats["train_rows"] == 90
    assert sorted(v for k, v in count.items() if k.startswith("c")) == [2] * 10 + [3] * 10
    assert all(count[f"b{i}"] == 1 for i in range(30))
    entries = first.stats["sources"]
    assert [(e["rows_read"], e["rows_weighted"], e["rows_kept"]) for e in entries] == [
        (40, 10, 10), (30, 30, 30), (20, 50, 50),
    ]  # fmt: skip
    c = entries[2]
    assert c["trained_tokens_before"] * 2 < c["trained_tokens"] < c["trained_tokens_before"] * 3
    assert entries[0]["trained_tokens_before"] is None  # the rows left out were never tokenized
    assert "weight 2.5" in out and "20 rows read -> 50 weighted" in out and "% of all trained" in out

    again = data.prepare(make_cfg(tiny_model_dir, tmp_path, datasets, prepared="other"), tok)  # built anew
    hit = data.prepare(make_cfg(tiny_model_dir, tmp_path, datasets), tok)  # from the cache
    assert hit.path == first.path and again.path != first.path
    for other in (again, hit):
        assert other.train["input_ids"] == first.train["input_ids"]
        assert other.stats["sources"] == entries


def test_weight_is_in_the_fingerprint(tiny_model_dir, tmp_path, tok):
    datasets = three_sources(tmp_path, weights=(1, 1, 1))
    plain = make_cfg(tiny_model_dir, tmp_path, datasets)
    heavier = make_cfg(tiny_model_dir, tmp_path, [*datasets[:2], {**datasets[2], "weight": 2}])
    assert data.fingerprint(heavier, tok) != data.fingerprint(plain, tok)


def test_weighted_rows_name_their_file_line(tiny_model_dir, tmp_path, tok):
    path = tmp_path / "bad.jsonl"
    rows = [{"q": f"q{i}", "a": f"a{i}"} for i in range(10)]
    rows[7] = {"q": "q7"}  # no answer field
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = make_cfg(tiny_model_dir, tmp_path, [{"path": str(path), "type": INST, "weight": 1.5}])
    with pytest.raises(data.UserError, match=r"bad.jsonl:8: missing field 'a'"):
        data.prepare(cfg, tok)


def test_weight_checks(tiny_model_dir, tmp_path):
    datasets = three_sources(tmp_path)
    with pytest.raises(ConfigError, match=r"datasets\[2\]\.weight.*dataset_exact_deduplication"):
        make_cfg(tiny_model_dir, tmp_path, datasets, dataset_exact_deduplication=True)
    with pytest.raises(ConfigError, match=r"datasets\[0\]\.weight"):
        make_cfg(tiny_model_dir, tmp_path, [{**datasets[0], "weight": 0}])


def test_source_lines_only_when_they_say_something():
    one = {"sources": [{"key": "datasets[0]", "path": "a", "weight": 1, "rows_read": 3, "rows_weighted": 3,
                        "rows_kept": 3, "trained_tokens": 9, "trained_tokens_before": 9}]}  # fmt: skip
    assert report.source_lines(one) == []
    assert report.source_lines(one, always=True) == [
        "datasets[0] a (weight 1): 3 rows read, 3 kept; 9 trained tokens (100% of all trained)"
    ]


def pairs(path: Path, n: int) -> Path:
    rows = [{"prompt": f"Question {i}?", "chosen": f" good {i}", "rejected": f" bad {i}"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("rl", ["dpo", "kto"])
def test_preference_and_kto_sources_are_weighted(tiny_model_dir, tmp_path, tok, rl):
    datasets = [{"path": str(pairs(tmp_path / "a.jsonl", 12)), "weight": 0.5},
                {"path": str(pairs(tmp_path / "b.jsonl", 8)), "weight": 1.5}]  # fmt: skip
    prepared = data.prepare(make_cfg(tiny_model_dir, tmp_path, datasets, rl=rl), tok)
    per_row = 2 if rl == "kto" else 1  # kto splits each pair into a desirable and an undesirable row
    assert [(e["rows_read"], e["rows_weighted"], e["rows_kept"]) for e in prepared.stats["sources"]] == [
        (12, 6, 6 * per_row), (8, 12, 12 * per_row),
    ]  # fmt: skip
    assert len(prepared.train) == 18 * per_row


def test_grpo_prompts_are_weighted(tiny_model_dir, tmp_path, tok):
    datasets = three_sources(tmp_path)
    cfg = make_cfg(
        tiny_model_dir,
        tmp_path,
        datasets,
        rl="grpo",
        trl={"max_completion_length": 8, "num_generations": 2},
        micro_batch_size=2,
    )
    prepared = data.prepare(cfg, tok)
    assert [e["rows_weighted"] for e in prepared.stats["sources"]] == [10, 30, 50]
    assert len(prepared.train) == 90
    assert Counter(s.split(":")[0][-7:] for s in prepared.train["source"]) == {
        "a.jsonl": 10,
        "b.jsonl": 30,
        "c.jsonl": 50,
    }
