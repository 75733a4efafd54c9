"""data.prepare end to end: exact labels on FinLoRA data, counts, splits, the cache, and generation prompts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import FINLORA, needs_shared
from conftest import FINLORA_INST as INST
from finetune import config, data
from finetune.data.formats import IGNORE
from finetune.data.tokenizer import load_tokenizer
from finetune.errors import UserError

EOT = "<|eot_id|>"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
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
    raw = {"base_model": str(tiny_model_dir), "adapter": "lora", "datasets": [{"path": "org/data"}]}
    return load_tokenizer(config.validate(raw))


QA = [{"context": f"Question {i}: what is ROE?", "target": f"Answer {i}."} for i in range(10)]


@needs_shared
@pytest.mark.parametrize("name", ["formula_train.jsonl", "fpb_test.jsonl", "financebench_train.jsonl"])
def test_finlora_rows_train_exactly_target_plus_eos(tiny_model_dir, tmp_path, tok, name):
    rows = [json.loads(line) for line in (FINLORA / name).read_text().splitlines() if line.strip()]
    cfg = make_cfg(
        tiny_model_dir,
        tmp_path,
        [{"path": str(FINLORA / name), "type": INST}],
        sequence_len=8192,
        shuffle_merged_datasets=False,
    )
    prepared = data.prepare(cfg, tok)
    assert prepared.stats["rows_kept"] == len(prepared.train) == len(rows)
    for row, source in zip(prepared.train, rows, strict=True):
        assert trained(row, tok) == source["target"] + EOT
        assert masked(row, tok) == f"<|begin_of_text|>[INST] {source['context']} [/INST]"
        assert row["attention_mask"] == [1] * len(row["input_ids"])
    assert prepared.stats["trained_tokens"] == sum(
        sum(1 for t in r if t != IGNORE) for r in prepared.train["labels"]
    )


def test_drop_and_truncate_counts(tiny_model_dir, tmp_path, tok, capsys):
    long = {"context": "word " * 60, "target": "long answer"}
    rows = [
        *QA[:5],
        long,
        long | {"target": "other"},
        {"context": "q", "target": ""},
        {"context": "q", "target": " "},
    ]
    path = write_jsonl(tmp_path / "rows.jsonl", rows)

    def cfg_40(path, **extra):
        return make_cfg(
            tiny_model_dir, tmp_path, [{"path": str(path), "type": INST}], sequence_len=40, **extra
        )

    cfg = cfg_40(path)
    stats = data.prepare(cfg, tok).stats
    assert (stats["rows_in"], stats["rows_kept"], stats["dropped_too_long"], stats["empty_answer"]) == (
        9,
        5,
        2,
        2,
    )
    out = capsys.readouterr().out
    assert "dropped 2 rows longer than sequence_len 40 (excess_length_strategy: drop)" in out
    assert "skipped 2 rows with an empty answer" in out

    # truncate: the long prompt eats the whole budget, so no answer is left: those rows are dropped too
    cfg = cfg_40(path, excess_length_strategy="truncate")
    assert data.prepare(cfg, tok).stats["dropped_too_long"] == 2
    cut = {"context": "short", "target": "word " * 60}  # the answer is cut: kept, truncated
    path = write_jsonl(tmp_path / "rows2.jsonl", [*QA[:3], cut])
    cfg = cfg_40(path, excess_length_strategy="truncate")
    prepared = data.prepare(cfg, tok)
    assert (prepared.stats["truncated"], prepared.stats["dropped_too_long"], prepared.stats["rows_kept"]) == (
        1,
        0,
        4,
    )
    assert max(len(ids) for ids in prepared.train["input_ids"]) == 40
    assert "truncated 1 row to sequence_len 40 (excess_length_strategy: truncate)" in capsys.readouterr().out


def test_min_sample_len_drops_short_rows_and_says_so(tiny_model_dir, tmp_path, tok, capsys):
    rows = [
        {"context": "q", "target": "a"},
        {"context": "a much longer question " * 3, "target": "an answer"},
    ]
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    lengths = [len(tok(f"[INST] {r['context']} [/INST]")["input_ids"] + tok(r["target"], add_special_tokens=False)["input_ids"]) + 1 for r in rows]  # fmt: skip
    cut = lengths[0] + 1  # the first row is one token short of it
    cfg = make_cfg(tiny_model_dir, tmp_path, [{"path": str(path), "type": INST}], min_sample_len=cut)
    prepared = data.prepare(cfg, tok)
    assert prepared.train.num_rows == 1 and len(prepared.train[0]["input_ids"]) == lengths[1]  # the long one
    assert prepared.stats["dropped_too_short"] == 1
    assert f"dropped 1 row shorter than min_sample_len {cut}" in capsys.readouterr().out
    cfg = make_cfg(tiny_model_dir, tmp_path, [{"path": str(path), "type": INST}], min_sample_len=lengths[0])
    assert data.prepare(cfg, tok).stats["rows_kept"] == 2  # a row of exactly min_sample_len tokens stays


@pytest.mark.parametrize("overlap", [0, 8])
def test_long_completion_texts_are_split_into_chunks(tiny_model_dir, tmp_path, tok, capsys, overlap):
    """As axolotl's completion strategy: a text longer than sequence_len becomes chunks, never dropped."""
    text = " ".join(f"w{i}" for i in range(150))
    path = write_jsonl(tmp_path / "text.jsonl", [{"text": text}, {"text": "short one"}])
    ds = {"path": str(path), "type": "completion", **({"overlap_len": overlap} if overlap else {})}
    prepared = data.prepare(
        make_cfg(tiny_model_dir, tmp_path, [ds], sequence_len=40, shuffle_merged_datasets=False), tok
    )
    whole = tok(text)["input_ids"] + [tok.eos_token_id]
    step = 40 - overlap
    starts = [s for s in range(0, len(whole), step) if len(whole[s : s + 40]) >= 2]
    rows = prepared.train["input_ids"]
    assert rows[0] == tok("short one")["input_ids"] + [tok.eos_token_id]  # kept rows first, then chunks
    assert rows[1:] == [whole[s : s + 40] for s in starts]
    assert all(len(r) <= 40 for r in rows)
    assert prepared.train["labels"][1][0] == IGNORE and prepared.train["labels"][2] == rows[2]  # BOS masked
    stats = prepared.stats
    assert (stats["split_texts"], stats["chunks"], stats["dropped_too_long"]) == (1, len(starts), 0)
    assert (
        f"split 1 completion text longer than sequence_len 40 into {len(starts)} chunks"
        in capsys.readouterr().out
    )


def test_overlap_len_is_checked_with_the_config(tiny_model_dir, tmp_path):
    with pytest.raises(config.ConfigError) as info:
        make_cfg(
            tiny_model_dir, tmp_path,
            [{"path": "org/a", "type": "completion", "overlap_len": 40}, {"path": "org/b", "overlap_len": 2}],
            sequence_len=40,
        )  # fmt: skip
    assert info.value.problems == [
        "<config>: datasets[0].overlap_len: must be less than sequence_len (40)",
        "<config>: datasets[1].overlap_len: only type: completion splits texts into chunks",
    ]


def test_several_datasets_concatenated_and_val_split_seeded(tiny_model_dir, tmp_path, tok):
    alpaca = write_jsonl(
        tmp_path / "alpaca.jsonl", [{"instruction": f"Say {i}.", "output": str(i)} for i in range(10)]
    )
    qa = write_jsonl(tmp_path / "qa.jsonl", QA)
    datasets = [{"path": str(qa), "type": INST}, {"path": str(alpaca), "type": "alpaca"}]
    prepared = data.prepare(make_cfg(tiny_model_dir, tmp_path, datasets, val_set_size=0.25), tok)
    assert (len(prepared.train), len(prepared.eval)) == (15, 5)
    again = data.build(
        make_cfg(tiny_model_dir, tmp_path, datasets, val_set_size=0.25), tok, show_progress=False
    )
    assert again[1].column("input_ids").to_pylist() == prepared.eval["input_ids"]  # same seed, same split
    other = data.build(
        make_cfg(tiny_model_dir, tmp_path, datasets, val_set_size=0.25, seed=7), tok, show_progress=False
    )
    assert other[1].column("input_ids").to_pylist() != prepared.eval["input_ids"]
    counted = data.prepare(make_cfg(tiny_model_dir, tmp_path, datasets, val_set_size=3), tok)
    assert (len(counted.train), len(counted.eval)) == (17, 3)
    with pytest.raises(UserError) as info:
        data.prepare(make_cfg(tiny_model_dir, tmp_path, datasets, val_set_size=20), tok)
    assert info.value.problems == ["val_set_size: 20 leaves no training rows (20 rows after filtering)"]


def test_no_shuffle_keeps_order_and_test_datasets_give_eval(tiny_model_dir, tmp_path, tok):
    qa = write_jsonl(tmp_path / "qa.jsonl", QA)
    held = write_jsonl(tmp_path / "held.jsonl", [{"context": "held out?", "target": "yes"}, QA[0]])
    cfg = make_cfg(
        tiny_model_dir,
        tmp_path,
        [{"path": str(qa), "type": INST}],
        shuffle_merged_datasets=False,
        test_datasets=[{"path": str(held), "type": INST}],
        dataset_exact_deduplication=True,
    )
    prepared = data.prepare(cfg, tok)
    assert [trained(r, tok) for r in prepared.train] == [q["target"] + EOT for q in QA]
    # the test row identical to a training row is removed from eval
    assert [trained(r, tok) for r in prepared.eval] == ["yes" + EOT]
    assert prepared.stats["test_datasets"]["duplicates"] == 1 and prepared.stats["eval_rows"] == 1


def test_exact_deduplication(tiny_model_dir, tmp_path, tok):
    qa = write_jsonl(tmp_path / "qa.jsonl", QA + QA[:4])
    stats = data.prepare(
        make_cfg(
            tiny_model_dir, tmp_path, [{"path": str(qa), "type": INST}], dataset_exact_deduplication=True
        ),
        tok,
    ).stats
    assert (stats["rows_in"], stats["duplicates"], stats["rows_kept"], stats["train_rows"]) == (14, 4, 10, 10)


def test_cache_reused_when_nothing_changed_and_rebuilt_when_any_input_changes(
    tiny_model_dir, tmp_path, tok, capsys
):
    qa = write_jsonl(tmp_path / "qa.jsonl", QA)
    base = {"datasets": [{"path": str(qa), "type": INST}]}
    first = data.prepare(make_cfg(tiny_model_dir, tmp_path, **base), tok)
    stamp = (first.path / "finetune_stats.json").stat().st_mtime_ns
    capsys.readouterr()
    again = data.prepare(make_cfg(tiny_model_dir, tmp_path, **base), tok)
    assert again.path == first.path and (first.path / "finetune_stats.json").stat().st_mtime_ns == stamp
    assert "reused the cache" in capsys.readouterr().out
    assert again.train["input_ids"] == first.train["input_ids"]

    paths = {first.path}
    for extra in (
        {"sequence_len": 256},
        {"train_on_inputs": True},
        {"val_set_size": 2},
        {"excess_length_strategy": "truncate"},
        {"datasets": [{"path": str(qa), "type": {**INST, "format": "Q: {instruction} A:"}}]},
    ):
        paths.add(data.prepare(make_cfg(tiny_model_dir, tmp_path, **(base | extra)), tok).path)
    grown = load_tokenizer(make_cfg(tiny_model_dir, tmp_path, **base, tokens=["<|new|>"]))
    paths.add(data.prepare(make_cfg(tiny_model_dir, tmp_path, **base), grown).path)
    write_jsonl(qa, [*QA[:-1], {"context": "changed", "target": "data"}])  # same file name, new content
    paths.add(data.prepare(make_cfg(tiny_model_dir, tmp_path, **base), tok).path)
    assert len(paths) == 8


def test_other_ranks_only_read_the_cache(tiny_model_dir, tmp_path, tok):
    qa = write_jsonl(tmp_path / "qa.jsonl", QA)
    cfg = make_cfg(tiny_model_dir, tmp_path, [{"path": str(qa), "type": INST}], val_set_size=2)
    alone = data.prepare(cfg, tok, is_main=False)  # no cache visible: built in memory, nothing written
    assert alone.path is None and not (tmp_path / "prepared").exists()
    main = data.prepare(cfg, tok)
    other = data.prepare(cfg, tok, is_main=False)
    assert (
        other.path == main.path
        and other.eval["input_ids"] == main.eval["input_ids"] == alone.eval["input_ids"]
    )


def test_processes_give_the_same_tokens(tiny_model_dir, tmp_path, tok):
    rows = [{"context": f"q{i} " * (i % 7), "target": f"a{i}"} for i in range(2300)]
    qa = write_jsonl(tmp_path / "many.jsonl", rows)
    one = data.build(
        make_cfg(tiny_model_dir, tmp_path, [{"path": str(qa), "type": INST}]), tok, show_progress=False
    )
    two = data.build(
        make_cfg(tiny_model_dir, tmp_path, [{"path": str(qa), "type": INST}], dataset_processes=2),
        tok,
        show_progress=False,
    )
    assert one[0].equals(two[0]) and one[2] == two[2]


def test_special_tokens_are_added_and_used(tiny_model_dir, tmp_path):
    cfg = make_cfg(
        tiny_model_dir,
        tmp_path,
        [
            {
                "path": str(
                    write_jsonl(tmp_path / "t.jsonl", [{"context": "<|ticker|> AAPL", "target": "up"}])
                ),
                "type": INST,
            }
        ],
        tokens=["<|ticker|>"],
        special_tokens={"pad_token": "<|end_of_text|>"},
    )
    tokenizer = load_tokenizer(cfg)
    row = data.prepare(cfg, tokenizer).train[0]
    assert tokenizer.convert_tokens_to_ids("<|ticker|>") in row["input_ids"]


def test_generation_prompt_is_the_training_prompt(tiny_model_dir, tmp_path, tok):
    qa = write_jsonl(tmp_path / "qa.jsonl", QA[:1])
    cfg = make_cfg(tiny_model_dir, tmp_path, [{"path": str(qa), "type": INST}])
    row = data.prepare(cfg, tok).train[0]
    assert data.render(cfg, cfg.datasets[0], QA[0], tok) == (
        "[INST] Question 0: what is ROE? [/INST]",
        "Answer 0.",
    )
    prompt = data.encode_prompt(cfg, cfg.datasets[0], QA[0], tok)
    assert (
        prompt == row["input_ids"][: len(prompt)]
        and row["labels"][len(prompt) - 1] == IGNORE != row["labels"][len(prompt)]
    )

    chat = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello there."}]
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": chat}])
    cfg = make_cfg(tiny_model_dir, tmp_path, [{"path": str(path), "type": "chat_template"}])
    row = data.prepare(cfg, tok).train[0]
    assert data.render(cfg, cfg.datasets[0], {"messages": chat}, tok) == (chat[:1], "Hello there.")
    assert data.format_prompt(cfg, cfg.datasets[0], {"messages": chat}, tok).endswith(
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    prompt = data.encode_prompt(cfg, cfg.datasets[0], {"messages": chat}, tok)
    first_trained = next(i for i, label in enumerate(row["labels"]) if label != IGNORE)
    assert prompt == row["input_ids"][:first_trained]


def test_preprocess_inspect_marks_trained_text_and_shows_lengths(tiny_model_dir, tmp_path, capsys):
    qa = write_jsonl(tmp_path / "qa.jsonl", QA)
    cfg = make_cfg(
        tiny_model_dir,
        tmp_path,
        [{"path": str(qa), "type": INST}],
        shuffle_merged_datasets=False,
        val_set_size=2,
    )
    data.preprocess_command(cfg, inspect=2)
    out = capsys.readouterr().out
    assert (
        len(
            re.findall(
                r"<\|begin_of_text\|>\[INST\] Question (\d): what is ROE\? \[/INST\]⟦Answer \1\.<\|eot_id\|>⟧",
                out,
            )
        )
        == 2
    )
    assert "train lengths (8 rows)" in out and "eval lengths (2 rows)" in out


def test_fingerprint_ignores_the_tokenizers_padding_state(tiny_model_dir, tmp_path):
    cfg = make_cfg(
        tiny_model_dir, tmp_path, [{"path": str(write_jsonl(tmp_path / "qa.jsonl", QA)), "type": INST}]
    )
    tokenizer = load_tokenizer(cfg)
    before = data.fingerprint(cfg, tokenizer)
    tokenizer(["a", "b c d e"], padding=True, truncation=True, max_length=3)  # e.g. a collator ran first
    assert data.fingerprint(cfg, tokenizer) == before
