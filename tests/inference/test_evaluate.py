"""`finetune eval`: training-identical prompts, batched = one-at-a-time greedy, results beside the Trainer's,
predictions, --base-only, the card's model-index, user errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import FINLORA, needs_shared, sentiment_rows
from finetune import config, data
from finetune.data import answer_format
from finetune.data.formats import IGNORE
from finetune.errors import UserError
from finetune.inference import evaluate, generate
from finetune.model import generation

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def loaded(trained_run):
    return generate.load(trained_run)


@pytest.fixture()
def run(trained_run, tmp_path) -> Path:
    """A copy of the trained run to write into."""
    return Path(shutil.copytree(trained_run, tmp_path / "run"))


@pytest.fixture()
def test_file(tmp_path) -> Path:
    path = tmp_path / "sentiment_test.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in sentiment_rows(12, seed=1)))
    return path


def test_prompts_equal_the_prepared_training_tokens(trained_run, loaded):
    """Every row of the training file, read by eval, gives exactly the prompt tokens of its prepared row."""
    from finetune.data.tokenizer import load_tokenizer

    cfg = config.load(trained_run / "config.yml")
    prepared = data.prepare(cfg, load_tokenizer(cfg))
    trained = set()
    for table in (prepared.train, prepared.eval):
        for row in table:
            start = next(i for i, label in enumerate(row["labels"]) if label != IGNORE)
            trained.add(tuple(row["input_ids"][:start]))
    path = Path(cfg.datasets[0].path)
    rows = evaluate.read_rows(path)
    prompts = {tuple(e.prompt) for e in evaluate.examples(loaded, rows, path, None, None)}
    assert prompts == trained and len(prompts) > 10


def test_batched_greedy_equals_one_at_a_time(loaded, test_file):
    items = evaluate.examples(loaded, evaluate.read_rows(test_file), test_file, None, None)
    stop = answer_format.stop_ids(loaded.cfg, loaded.dataset, loaded.tokenizer, loaded.model)
    prompts = [e.prompt for e in items] + [items[0].prompt[:9]]  # one much shorter: real left padding
    batched = generation.generate_batch(loaded.model, loaded.tokenizer, prompts, 12, 5, stop)
    single = generation.generate_batch(loaded.model, loaded.tokenizer, prompts, 12, 1, stop)
    assert batched == single
    assert single[0] == generate.answer(loaded, prompts[0], 12)


def test_eval_writes_results_predictions_and_card(run, test_file):
    from huggingface_hub import ModelCard

    trainer_keys = json.loads((run / "eval_results.json").read_text())
    entry = evaluate.run(run, test_file, batch_size=4)
    results = json.loads((run / "eval_results.json").read_text())
    # the Trainer's keys are untouched; ours sit under one key, by data file and model
    assert {k: v for k, v in results.items() if k != "generation"} == trainer_keys
    assert results["generation"]["sentiment_test"]["finetuned"] == entry
    assert entry["task"] == "classification" and entry["examples"] == 12 and entry["model"] == "adapter"
    lines = [json.loads(line) for line in (run / "predictions_sentiment_test.jsonl").read_text().splitlines()]
    assert len(lines) == 12 and set(lines[0]) == {
        "line",
        "input",
        "target",
        "prediction",
        "parsed",
        "correct",
    }
    assert entry["accuracy"] == pytest.approx(sum(x["correct"] for x in lines) / 12)
    assert [x["target"] for x in lines] == [r["target"] for r in sentiment_rows(12, seed=1)]

    card = ModelCard.load(run / "README.md")
    mine = {(r.metric_type, r.metric_config): r.metric_value for r in card.data.eval_results if r.dataset_name == "sentiment_test"}  # fmt: skip
    assert mine == {("accuracy", None): entry["accuracy"], ("f1", "macro"): entry["macro_f1"],
                    ("f1", "weighted"): entry["weighted_f1"]}  # fmt: skip
    assert any(r.metric_type == "loss" for r in card.data.eval_results)  # the validation loss is still there

    # --base-only: the "before" beside the "after"; base scores are not this model's model-index
    base = evaluate.run(run, test_file, batch_size=4, base_only=True)
    results = json.loads((run / "eval_results.json").read_text())
    assert results["generation"]["sentiment_test"] == {"finetuned": entry, "base": base}
    assert base["model"] == "base" and (run / "predictions_sentiment_test_base.jsonl").is_file()
    text = (run / "README.md").read_text()
    assert "| metric | base model | fine-tuned |" in text
    assert f"| Accuracy | {base['accuracy']:.4f} | {entry['accuracy']:.4f} |" in text
    assert len([r for r in ModelCard.load(run / "README.md").data.eval_results if r.dataset_name == "sentiment_test"]) == 3  # fmt: skip

    # `finetune card` rebuilds the same card from the files
    from finetune.outputs import card

    card.write_card(run)
    assert (run / "README.md").read_text() == text


def test_out_elsewhere_leaves_the_run_alone(run, test_file, tmp_path):
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    evaluate.run(run, test_file, batch_size=6, out=tmp_path / "elsewhere", limit=3)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    saved = json.loads((tmp_path / "elsewhere" / "eval_results.json").read_text())
    assert (
        list(saved) == ["generation"] and saved["generation"]["sentiment_test"]["finetuned"]["examples"] == 3
    )


def test_other_fields_and_metrics(run, tmp_path):
    path = tmp_path / "numbers.jsonl"
    rows = [{"q": f"[Q] {a} plus {b}?", "answer": f"{a + b}.0"} for a, b in ((1, 2), (3, 4), (10, 5))]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    entry = evaluate.run(run, path, field_input="q", field_target="answer", max_new_tokens=4)
    assert entry["task"] == "numeric" and "numeric_match" in entry and entry["max_new_tokens"] == 4
    exact = evaluate.run(run, path, field_input="q", field_target="answer", metric="exact", max_new_tokens=4)
    assert exact["task"] == "exact" and "exact_match" in exact
    first = json.loads((run / "predictions_numbers.jsonl").read_text().splitlines()[0])
    assert first["input"] == "[Q] 1 plus 2?" and first["target"] == "3.0"


def test_user_mistakes(run, tmp_path, test_file):
    missing = tmp_path / "missing.jsonl"
    missing.write_text('{"context": "a", "target": "b"}\n{"question": "c"}\n')
    with pytest.raises(
        UserError, match=r"missing.jsonl:2: missing field 'context' \(choose the column with --field-input\)"
    ):
        evaluate.run(run, missing)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"context": "a", "target": "b"}\n{oops\n')
    with pytest.raises(UserError, match=r"bad.jsonl:2: not valid JSON"):
        evaluate.run(run, bad)
    with pytest.raises(UserError, match="--metric: must be one of"):
        evaluate.run(run, test_file, metric="bleu")
    with pytest.raises(UserError, match="--data .*: file not found"):
        evaluate.run(run, tmp_path / "nope.jsonl")
    with pytest.raises(UserError, match="--batch-size: must be > 0"):
        evaluate.run(run, test_file, batch_size=0)


def test_json_array_and_csv_rows_keep_their_lines(tmp_path):
    array = tmp_path / "rows.json"
    array.write_text('[\n  {"context": "a", "target": "b"},\n  {"context": "c",\n   "target": "d"}\n]\n')
    assert evaluate.read_rows(array) == [
        (2, {"context": "a", "target": "b"}),
        (3, {"context": "c", "target": "d"}),
    ]
    assert evaluate.read_rows(array, limit=1) == [(2, {"context": "a", "target": "b"})]
    array.write_text('[{"context": "a"},\n {"context": oops}]')
    with pytest.raises(UserError, match=r"rows.json:2: not valid JSON"):
        evaluate.read_rows(array)
    table = tmp_path / "rows.csv"
    table.write_text('context,target\n"two\nlines",b\nc,d\n')
    assert evaluate.read_rows(table) == [
        (2, {"context": "two\nlines", "target": "b"}),
        (4, {"context": "c", "target": "d"}),
    ]
    with pytest.raises(UserError, match=r"--data .*rows.parquet: expected a .jsonl, .json or .csv file"):
        (tmp_path / "rows.parquet").write_bytes(b"PAR1")
        evaluate.read_rows(tmp_path / "rows.parquet")


@needs_shared
def test_cli_eval_on_finlora_fpb(run):
    """`finetune eval RUN --data fpb_test.jsonl --limit 50`: results, predictions and the card's model-index."""
    from huggingface_hub import ModelCard
    from typer.testing import CliRunner

    from finetune.cli import app

    result = CliRunner().invoke(
        app, ["eval", str(run), "--data", str(FINLORA / "fpb_test.jsonl"), "--limit", "50"]
    )
    assert result.exit_code == 0, result.output
    assert "fpb_test (classification)" in result.output and "Macro F1" in result.output
    entry = json.loads((run / "eval_results.json").read_text())["generation"]["fpb_test"]["finetuned"]
    assert entry["examples"] == 50 and 0 <= entry["accuracy"] <= 1
    assert set(entry["per_class"]) == {"neutral", "positive", "negative"}
    assert len((run / "predictions_fpb_test.jsonl").read_text().splitlines()) == 50
    index = {(r.dataset_name, r.metric_type, r.metric_config) for r in ModelCard.load(run / "README.md").data.eval_results}  # fmt: skip
    assert {
        ("fpb_test", "accuracy", None),
        ("fpb_test", "f1", "macro"),
        ("fpb_test", "f1", "weighted"),
    } <= index


def test_input_output_prompts_equal_the_training_tokens(tiny_model_dir, tmp_path):
    """A template-free run: eval's prompt is the text before the first trained segment, tokenized as trained;
    the target is the trained text; a question from `generate` goes the same way."""
    from types import SimpleNamespace

    from finetune.data.tokenizer import load_tokenizer

    rows = [
        {
            "segments": [
                {"label": False, "text": f"<s>[Q] ratio {i}?"},
                {"label": True, "text": f" answer {i}</s>"},
            ]
        }
        for i in range(6)
    ]
    path = tmp_path / "segments.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = config.validate({
        "base_model": str(tiny_model_dir), "adapter": "lora", "sequence_len": 128, "dataset_processes": 1,
        "datasets": [{"path": str(path), "type": "input_output"}], "dataset_prepared_path": str(tmp_path / "p"),
    })  # fmt: skip
    tok = load_tokenizer(cfg)
    prepared = data.prepare(cfg, tok)
    trained = set()
    for row in prepared.train:
        start = next(i for i, label in enumerate(row["labels"]) if label != IGNORE)
        trained.add(tuple(row["input_ids"][:start]))
    loaded = SimpleNamespace(cfg=cfg, dataset=cfg.datasets[0], tokenizer=tok)
    examples = evaluate.examples(loaded, evaluate.read_rows(path), path, None, None)
    assert {tuple(e.prompt) for e in examples} == trained and len(trained) == 6
    assert [e.target for e in examples] == [f" answer {i}</s>" for i in range(6)]
    assert examples[0].input == "<s>[Q] ratio 0?"
    asked = generate.question_prompt(cfg, cfg.datasets[0], tok, "<s>[Q] ratio 0?")
    assert asked == list(examples[0].prompt)
