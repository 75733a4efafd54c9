"""`finetune data`: what the prepared sets hold — rows kept and dropped, tokens, lengths, labels, exact and
near-duplicates, and the eval split's and --against files' overlap with the training rows — written to
data_report.{json,md,png}; `train` prints three lines of it and warns on overlap."""

from __future__ import annotations

import json
import random
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from finetune import cli, config
from finetune.data import contamination, report_files, row_text

INST = {"field_instruction": "q", "field_output": "a", "format": "{instruction} ="}
LABELS = ("positive", "negative", "neutral")
WORDS = [
    f"{a}{b}" for a in ("ka", "lo", "mi", "ne", "su", "ta", "ve", "zo") for b in ("b", "d", "g", "r", "t")
]


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def rows(tag: str, n: int, seed: int, words: int = 20) -> list[dict]:
    rng = random.Random(seed)
    return [{"q": f"{tag} {sentence(rng, words)}", "a": rng.choice(LABELS)} for _ in range(n)]


def write(path: Path, items: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in items))
    return path


def raw_config(tiny_model_dir, tmp_path, datasets, **extra) -> dict:
    return {
        "base_model": str(tiny_model_dir),
        "adapter": "lora",
        "datasets": [{"path": str(p), "type": INST} for p in datasets],
        "sequence_len": 512,
        "dataset_prepared_path": str(tmp_path / "prepared"),
        "dataset_processes": 1,
        **extra,
    }


def make_cfg(*args, **extra) -> config.Config:
    return config.validate(raw_config(*args, **extra))


def config_file(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "config.yml"
    path.write_text(json.dumps(raw))  # JSON is YAML
    return path


def run_data(monkeypatch, capsys, cfg_path: Path, *args) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["finetune", "data", str(cfg_path), *map(str, args)])
    try:
        cli.main()
        code = 0
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A training file holding 20 rows of the eval file (5 of them in upper case with doubled spaces),
    15 rows of an --against file and 3 rows too long for sequence_len; and the clean training file."""
    folder = tmp_path_factory.mktemp("planted")
    own, ev, against = rows("train", 200, 1), rows("eval", 50, 2), rows("bench", 40, 3)
    shouted = [{"q": r["q"].upper().replace(" ", "  "), "a": r["a"].upper()} for r in ev[15:20]]
    too_long = rows("long", 3, 4, words=400)
    mixed = own[:100] + ev[:15] + against[:15] + too_long + shouted + own[100:]
    return {
        "train": write(folder / "train.jsonl", mixed),
        "clean": write(folder / "clean.jsonl", own),
        "eval": write(folder / "eval.jsonl", ev),
        "against": write(folder / "against.jsonl", against),
        "answers": Counter(r["a"] for r in mixed if r not in too_long),  # case kept: another label to a model
    }


def test_planted_eval_and_against_rows_are_reported_exactly(
    tiny_model_dir, tmp_path, planted, monkeypatch, capsys
):
    cfg = raw_config(
        tiny_model_dir,
        tmp_path,
        [planted["train"]],
        test_datasets=[{"path": str(planted["eval"]), "type": INST}],
    )
    code, out, err = run_data(
        monkeypatch, capsys, config_file(tmp_path, cfg), "--against", planted["against"], "--json"
    )
    assert code == 0, err
    found = json.loads(out)  # stdout is the JSON object alone
    assert {k: found["overlap"]["eval"][k] for k in ("rows", "exact_rows", "ngram_rows")} == {
        "rows": 50, "exact_rows": 20, "ngram_rows": 20}  # fmt: skip
    assert found["overlap"]["eval"]["ngram_share"] == 0.4
    [against] = found["overlap"]["against"]
    assert (against["file"], against["rows"], against["exact_rows"], against["ngram_rows"]) == (
        str(planted["against"]), 40, 15, 15)  # fmt: skip

    # every figure: per source rows read / kept / dropped and why, tokens, lengths against sequence_len, labels
    train_source, eval_source = found["sources"]
    assert (train_source["rows_read"], train_source["rows_kept"], train_source["rows_in_train"]) == (
        238,
        235,
        235,
    )
    assert train_source["removed"] == {"dropped_too_long": 3} and train_source["over_sequence_len"] == 3
    assert (eval_source["key"], eval_source["rows_in_eval"], eval_source["rows_in_train"]) == (
        "test_datasets[0]",
        50,
        0,
    )
    assert train_source["trained_tokens"] + train_source["masked_tokens"] == found["train"]["tokens"]
    assert found["train"]["trained_tokens"] + found["train"]["masked_tokens"] == found["train"]["tokens"]
    lengths = found["train"]["lengths"]
    assert lengths["min"] <= lengths["p50"] <= lengths["p90"] <= lengths["p99"] <= lengths["max"] <= 512
    assert train_source["labels"] == dict(planted["answers"].most_common())
    assert found["exact_duplicates"]["rows"] == 0 and found["near_duplicates"]["rows"] == 0
    assert sum(sum(c) for c in found["histogram"]["counts"].values()) == 235
    assert found["sequence_len"] == 512 and found["eval_from"] == "test_datasets"

    # the files next to the prepared data: the same JSON, the Markdown, a PNG
    folder = Path(found["prepared"])
    assert json.loads((folder / "data_report.json").read_text()) == found
    assert (folder / "data_report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (folder / "data_report.md").read_text()
    assert "| eval split | 50 | 20 | 20 (40.0%) |" in md and "dropped_too_long 3" in md

    # the screen version warns of both leaks
    code, out, err = run_data(
        monkeypatch, capsys, config_file(tmp_path, cfg), "--against", planted["against"]
    )
    assert code == 0, err
    assert "warning: the eval split: 20 of 50 rows are training rows" in out
    assert f"warning: --against {planted['against']}: 15 of 40 rows are training rows" in out


def test_clean_data_reports_no_overlap(tiny_model_dir, tmp_path, planted):
    from finetune.data import analysis, prepare
    from finetune.data.tokenizer import load_tokenizer

    cfg = make_cfg(
        tiny_model_dir,
        tmp_path,
        [planted["clean"]],
        test_datasets=[{"path": str(planted["eval"]), "type": INST}],
    )
    tok = load_tokenizer(cfg)
    found = analysis.analyse(cfg, tok, prepare(cfg, tok).path, [str(planted["against"])]).report
    for o in (found["overlap"]["eval"], found["overlap"]["against"][0]):
        assert (o["exact_rows"], o["ngram_rows"]) == (0, 0)
    assert report_files.warnings(found) == []


def paraphrase(text: str, rng: random.Random) -> str:
    """One word replaced and one inserted, the case changed and spaces doubled: near, never exact."""
    words = text.split()
    i, j = rng.randrange(5, len(words)), rng.randrange(5, len(words))
    words[i] = "changed"
    words.insert(j, "extra")
    return "  ".join(words).title()


def test_near_duplicates_counted_on_planted_paraphrases(tiny_model_dir, tmp_path):
    from finetune.data import analysis, prepare
    from finetune.data.tokenizer import load_tokenizer

    rng = random.Random(5)
    a = rows("a", 120, 6, words=60)
    within = [{"q": paraphrase(r["q"], rng), "a": r["a"]} for r in a[:4]]  # 4 paraphrases in a itself
    exact = [{"q": r["q"].upper(), "a": r["a"]} for r in a[10:13]]  # 3 exact (normalised) repeats
    across = [{"q": paraphrase(r["q"], rng), "a": r["a"]} for r in a[20:28]]  # 8 paraphrases in b
    files = [
        write(tmp_path / "a.jsonl", a + within + exact),
        write(tmp_path / "b.jsonl", rows("b", 30, 7, 60) + across),
    ]
    cfg = make_cfg(tiny_model_dir, tmp_path, files, sequence_len=1024)
    tok = load_tokenizer(cfg)
    found = analysis.analyse(cfg, tok, prepare(cfg, tok).path)
    assert found.report["exact_duplicates"] == {"rows": 3, "within_source": 3, "across_sources": 0}
    near = found.report["near_duplicates"]
    assert (near["rows"], near["within_source"], near["across_sources"]) == (12, 4, 8)
    # per row (a data preview's table): a paraphrase names the row it repeats
    preview = analysis.rows(found, tok, 0, len(found.train.length))
    flagged = [r for r in preview if r["near_duplicate_of"] is not None]
    assert len(flagged) == 12
    for r in flagged:  # rows are shuffled: the cluster's first row may be the original or the paraphrase
        first = preview[r["near_duplicate_of"]]
        assert first["near_duplicate_of"] is None and first["text"] != r["text"]
        assert len(set(first["text"].split()) ^ set(r["text"].split())) <= 3


def test_minhash_and_ngrams_by_hand():
    words = row_text.to_words(["A  b c\td e ", "a b c d e", "a b c d f", "x y"])
    assert contamination.exact_groups(words.text_ids).tolist() == [0, 0, 2, 3]
    h, r, at = contamination.ngrams(words, 3)
    assert r.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]  # no 3-gram spans two rows; "x y" has none
    assert h[0] == h[3] and h[2] != h[8] and at.tolist() == [0, 1, 2, 5, 6, 7, 10, 11, 12]
    sig = contamination.signatures(words)
    assert (sig[0] == sig[1]).all() and not (sig[3] == contamination._M).all()


def test_labels_only_for_label_like_answers():
    from finetune.data.analysis import _labels

    assert _labels(["yes", "no", "yes", "yes"]) == {"yes": 3, "no": 1}
    assert _labels([f"a long free text answer number {i}" for i in range(10)]) is None
    assert _labels([f"id{i}" for i in range(10)]) is None  # short, but every answer different


def test_against_file_that_is_missing_is_one_line(tiny_model_dir, tmp_path, planted, monkeypatch, capsys):
    cfg = raw_config(tiny_model_dir, tmp_path, [planted["clean"]], val_set_size=0.1)
    code, out, err = run_data(
        monkeypatch, capsys, config_file(tmp_path, cfg), "--against", tmp_path / "nope.jsonl"
    )
    assert code == 2
    assert err.strip() == f"--against {tmp_path / 'nope.jsonl'}: no such file"


def test_train_prints_three_lines_and_warns(tiny_model_dir, tmp_path, planted, capsys, one_thread):
    from finetune import train

    cfg = make_cfg(
        tiny_model_dir, tmp_path, [planted["train"]], test_datasets=[{"path": str(planted["eval"]), "type": INST}],
        output_dir=str(tmp_path / "out"), max_steps=1, micro_batch_size=2, sequence_len=256,
    )  # fmt: skip
    train.run(cfg)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("data report: ")]
    assert len(lines) == 3, err
    assert "eval rows in training: 20 exact" in lines[2]
    assert "warning: the eval split: 20 of 50 rows are training rows" in err
    assert len(list(Path(cfg.prepared_path).glob("*/data_report.png"))) == 1  # written by train


def test_test_datasets_with_no_rows_left_is_one_line(tiny_model_dir, tmp_path, planted):
    from finetune.data import prepare
    from finetune.data.tokenizer import load_tokenizer
    from finetune.errors import UserError

    long_eval = write(tmp_path / "long.jsonl", rows("long", 4, 8, words=400))
    cfg = make_cfg(
        tiny_model_dir, tmp_path, [planted["clean"]], test_datasets=[{"path": str(long_eval), "type": INST}]
    )
    with pytest.raises(
        UserError,
        match=r"^test_datasets: no rows left to evaluate on \(dropped 4 rows longer than sequence_len 512",
    ):
        prepare(cfg, load_tokenizer(cfg))
    assert not list((tmp_path / "prepared").glob("*/dataset_dict.json"))  # nothing half-written


def test_a_shared_template_is_not_a_leak_but_13_words_of_a_row_are():
    template = "you are a careful assistant who reads the news and answers with one word only please"
    rng = random.Random(9)
    train = [f"{template} net sales {sentence(rng, 20)}" for _ in range(30)]
    other = [f"{template} net sales {sentence(rng, 20)}" for _ in range(5)]
    other.append(f"{template} {' '.join(train[3].split()[20:33])} and more")  # 13 words of a training row
    found = contamination.overlap(*(row_text.to_words(t) for t in (train, other)))
    assert (found["exact_rows"], found["ngram_rows"]) == (0, 1) and found["ngram"].tolist() == [0] * 5 + [1]


def test_rows_decoded_from_token_bytes_match_the_tokenizer(tiny_model_dir):
    """The byte-table decode (byte-level BPE) gives the tokenizer's own text, normalised; so does the
    fallback through the Rust tokenizer."""
    from finetune.data.tokenizer import load_tokenizer

    tok = load_tokenizer(
        config.validate(
            {"base_model": str(tiny_model_dir), "adapter": "lora", "datasets": [{"path": "org/data"}]}
        )
    )
    texts = ["Héllo  WORLD\n\tçà et là — 3.5%", "", "  spaced   out  ", "naïve café ünïcode 日本語"]
    rows_ = [tok(t)["input_ids"] + [tok.eos_token_id] for t in texts]
    values, offsets = np.concatenate(rows_), np.cumsum([0] + [len(r) for r in rows_])
    flat, starts = row_text.normalise(*row_text.decode(tok, values, offsets))
    expected = [" ".join(t.split()).lower() for t in tok.batch_decode(rows_, skip_special_tokens=True)]
    ascii_lower = [
        e if e.isascii() else "".join(c.lower() if c.isascii() else c for c in e) for e in expected
    ]
    assert [row_text.text(flat, starts, i) for i in range(len(texts))] == ascii_lower
    slow = row_text.from_texts(tok.backend_tokenizer.decode_batch(rows_, skip_special_tokens=True))
    assert (row_text.normalise(*slow)[0] == flat).all()


def test_rows_sharing_a_long_template_are_not_near_duplicates_for_it():
    rng = random.Random(11)
    template = " ".join(f"t{i}" for i in range(100))  # a long instruction every row carries
    texts = [
        f"{template} question: {' '.join(f'w{rng.randrange(10**6)}' for _ in range(10))}" for _ in range(40)
    ]
    texts.append(texts[5].rsplit(" ", 1)[0] + " changed")  # a real near-duplicate: the question's last word
    words = row_text.to_words(texts)
    near_of = contamination.near_groups(contamination.signatures(words), np.arange(len(texts)))
    assert contamination.count_repeats(near_of, np.zeros(len(texts), np.int64))["rows"] == 1
    assert near_of[40] == 5
