"""`finetune data` on preference (rl: dpo), rl: kto and rl: grpo configs (data/report_pairs.py): per-source
rows and answer tokens with weights and shares, lengths against the limit, exact duplicates, and the eval
split's and --against files' overlap on the prompt text; files written; what is not reported is said."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pyarrow.compute as pc
import pytest

from finetune import cli

PAIR = {"field_prompt": "q", "field_chosen": "good", "field_rejected": "bad"}
WORDS = [
    f"{a}{b}" for a in ("ka", "lo", "mi", "ne", "su", "ta", "ve", "zo") for b in ("b", "d", "g", "r", "t")
]


def prompts(tag: str, n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"{tag} {' '.join(rng.choice(WORDS) for _ in range(16))} ?" for _ in range(n)]


def pairs(tag: str, n: int, seed: int) -> list[dict]:
    return [{"q": q, "good": " yes", "bad": " no"} for q in prompts(tag, n, seed)]


def write(path: Path, items: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in items))
    return path


def run_data(monkeypatch, capsys, tmp_path: Path, raw: dict, *args) -> dict:
    path = tmp_path / "config.yml"
    path.write_text(json.dumps(raw))
    monkeypatch.setattr(sys, "argv", ["finetune", "data", str(path), *map(str, args), "--json"])
    try:
        cli.main()
    except SystemExit as exc:
        assert exc.code == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def base(tiny_model_dir, tmp_path, **extra) -> dict:
    return {"base_model": str(tiny_model_dir), "adapter": "lora", "sequence_len": 64, "dataset_processes": 1,
            "dataset_prepared_path": str(tmp_path / "prepared"), **extra}  # fmt: skip


def test_dpo_report_counts_sources_weights_lengths_repeats_and_planted_overlap(
    tiny_model_dir, tmp_path, monkeypatch, capsys
):
    own, other, bench = pairs("own", 40, 1), pairs("other", 10, 2), pairs("bench", 12, 3)
    # test_datasets: 6 rows whose prompts are training prompts (other answers: the rows are not the same)
    evals = [{**r, "good": " maybe"} for r in own[:6]] + pairs("eval", 14, 4)
    train_rows = own + bench[:5] + own[:3]  # 5 rows of the --against file, 3 exact repeats
    raw = base(
        tiny_model_dir,
        tmp_path,
        rl="dpo",
        datasets=[
            {"path": str(write(tmp_path / "a.jsonl", train_rows)), "type": PAIR},
            {"path": str(write(tmp_path / "b.jsonl", other)), "type": PAIR, "weight": 2},
        ],
        test_datasets=[{"path": str(write(tmp_path / "eval.jsonl", evals)), "type": PAIR}],
    )
    against = write(tmp_path / "bench.jsonl", bench)
    found = run_data(monkeypatch, capsys, tmp_path, raw, "--against", against)

    assert found["kind"] == "preference pairs" and found["train"]["rows"] == 48 + 20
    a, b = found["sources"]
    assert (a["rows_read"], a["rows_weighted"], a["rows_kept"]) == (48, 48, 48)
    assert (b["weight"], b["rows_read"], b["rows_weighted"], b["rows_kept"]) == (2, 10, 20, 20)
    assert a["share_of_trained_tokens"] + b["share_of_trained_tokens"] == pytest.approx(1, abs=1e-3)
    assert b["share_of_trained_tokens"] == round(
        b["trained_tokens"] / (a["trained_tokens"] + b["trained_tokens"]), 4
    )
    # exact repeats: the 3 planted ones and the second copy of each of b's 10 rows (weight 2)
    assert found["exact_duplicates"]["rows"] == 3 + 10 and found["repeated_prompts"]["rows"] == 13
    assert (found["overlap"]["eval"]["rows"], found["overlap"]["eval"]["exact_rows"]) == (20, 6)
    [bench_overlap] = found["overlap"]["against"]
    assert (bench_overlap["rows"], bench_overlap["exact_rows"], bench_overlap["ngram_rows"]) == (12, 5, 5)

    # lengths: prompt + the longer answer of each cached pair
    from finetune.data import load_prepared

    cached = load_prepared(found["prepared"]).train.data.table
    longest = [
        len(p) + max(len(c), len(r))
        for p, c, r in zip(
            *(cached[k].to_pylist() for k in ("prompt_ids", "chosen_ids", "rejected_ids")), strict=True
        )
    ]
    assert found["train"]["lengths"]["max"] == max(longest) and found["train"]["lengths"]["min"] == min(
        longest
    )
    answers = sum(
        int(pc.sum(pc.list_value_length(cached[k])).as_py()) for k in ("chosen_ids", "rejected_ids")
    )
    assert found["train"]["answer_tokens"] == answers
    assert sum(found["histogram"]["counts"]["all"]) == 68

    folder = Path(found["prepared"])
    assert json.loads((folder / "data_report.json").read_text()) == found
    assert (folder / "data_report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (folder / "data_report.md").read_text()
    assert "| eval split | 20 | 6 |" in md and "Not reported for this method: per-source lengths" in md


def test_clean_dpo_data_has_no_overlap_and_no_repeats(tiny_model_dir, tmp_path, monkeypatch, capsys):
    raw = base(tiny_model_dir, tmp_path, rl="dpo", val_set_size=0.2,
               datasets=[{"path": str(write(tmp_path / "a.jsonl", pairs("own", 40, 1))), "type": PAIR}])  # fmt: skip
    found = run_data(
        monkeypatch, capsys, tmp_path, raw, "--against", write(tmp_path / "x.jsonl", pairs("x", 9, 5))
    )
    assert (found["train"]["rows"], found["eval"]["rows"]) == (32, 8)
    assert found["exact_duplicates"]["rows"] == 0 and found["overlap"]["eval"]["exact_rows"] == 0
    assert found["overlap"]["eval"]["ngram_rows"] == 0 and found["overlap"]["against"][0]["exact_rows"] == 0


def test_kto_report_counts_kinds_and_overlap(tiny_model_dir, tmp_path, monkeypatch, capsys):
    rows = [{"prompt": q, "completion": " yes" if i % 3 else " no", "label": bool(i % 3)}
            for i, q in enumerate(prompts("kto", 30, 6))]  # fmt: skip
    raw = base(
        tiny_model_dir, tmp_path, rl="kto", datasets=[{"path": str(write(tmp_path / "k.jsonl", rows))}]
    )
    against = write(
        tmp_path / "bench.jsonl", rows[:4] + [{**r, "prompt": r["prompt"] + " x"} for r in rows[4:6]]
    )
    found = run_data(monkeypatch, capsys, tmp_path, raw, "--against", against)
    assert found["kind"] == "kto rows" and (found["desirable"], found["undesirable"]) == (20, 10)
    assert found["sources"][0]["rows_kept"] == 30 and found["sources"][0]["share_of_trained_tokens"] == 1.0
    assert found["overlap"]["against"][0]["exact_rows"] == 4  # the two changed prompts are not exact rows
    assert found["exact_duplicates"]["rows"] == 0


def test_grpo_report_is_written_apart_from_any_cache(tiny_model_dir, tmp_path, monkeypatch, capsys):
    text = {"field_instruction": "q", "field_output": "a", "format": "{instruction} ="}
    rows = [{"q": q, "a": "yes"} for q in prompts("g", 20, 7)] + [{"q": "g short ?", "a": "no"}] * 2
    raw = base(tiny_model_dir, tmp_path, rl="grpo", micro_batch_size=2,
               trl={"max_completion_length": 8, "num_generations": 2, "reward_funcs": ["label"]},
               datasets=[{"path": str(write(tmp_path / "g.jsonl", rows)), "type": text}])  # fmt: skip
    found = run_data(monkeypatch, capsys, tmp_path, raw, "--against", write(tmp_path / "b.jsonl", rows[:3]))
    assert found["kind"] == "grpo prompts" and found["train"]["rows"] == 22 and found["eval"] is None
    assert found["length_limit"] == 64 - 8 and found["sources"][0]["share_of_rows"] == 1.0
    assert found["exact_duplicates"]["rows"] == 1 and found["overlap"]["against"][0]["exact_rows"] == 3
    folder = Path(found["prepared"])
    assert folder.name.startswith("grpo-") and (folder / "data_report.md").is_file()
    assert sorted(p.name for p in folder.iterdir()) == [
        "data_report.json",
        "data_report.md",
        "data_report.png",
    ]
