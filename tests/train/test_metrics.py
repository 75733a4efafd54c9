"""Scoring: normalization, label extraction, hand-computed accuracy/F1 by class, numbers; the Trainer hooks."""

from __future__ import annotations

import json

import pytest

from finetune import scoring as metrics
from finetune.data import answer_format
from finetune.model import generation
from finetune.train import eval_metrics

LABELS = ["positive", "negative", "neutral"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("  Return on  Equity. ", "return on equity"),
        ("NEGATIVE!", "negative"),
        ("net-income_ratio", "net income ratio"),
        ("$1,200.50 (est.)", "1,200.50 est"),  # separators inside numbers stay: 3.5 is not 35
        ("3.5", "3.5"),
    ],
)
def test_normalize(text, expected):
    assert metrics.normalize(text) == expected


@pytest.mark.parametrize(
    ("prediction", "labels", "expected"),
    [
        ("The sentiment is Positive.", LABELS, "positive"),
        ("negative, not positive", LABELS, "negative"),  # the first one named
        ("neutral-ish", LABELS, "neutral"),
        ("unpositive", LABELS, None),  # whole words only
        ("I cannot tell", LABELS, None),
        ("not relevant at all", ["relevant", "not relevant"], "not relevant"),
        ("strong buy now", ["strong", "strong buy"], "strong buy"),  # same start: the longest label
    ],
)
def test_extract_label(prediction, labels, expected):
    assert metrics.extract_label(prediction, labels) == expected


def test_f1_by_class_by_hand():
    """targets pos pos pos neg neg neu; predictions pos pos neg neg (none) pos.
    positive: tp 2 fp 1 fn 1 -> P 2/3 R 2/3 F1 2/3; negative: tp 1 fp 1 fn 1 -> 1/2; neutral: tp 0 -> 0.
    accuracy 3/6; macro (2/3 + 1/2 + 0) / 3 = 7/18; weighted (2/3*3 + 1/2*2 + 0*1) / 6 = 1/2."""
    predictions = ["Positive.", "positive", "I think negative", "NEGATIVE!", "no idea", "positive"]
    targets = ["positive", "positive", "positive", "negative", "negative", "neutral"]
    scored = metrics.score(predictions, targets)
    assert scored.kind == "classification"
    s = scored.summary
    assert s["accuracy"] == pytest.approx(0.5)
    assert s["macro_f1"] == pytest.approx(7 / 18)
    assert s["weighted_f1"] == pytest.approx(0.5)
    assert s["no_label"] == 1
    assert s["per_class"]["positive"] == pytest.approx(
        {"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3}
    )
    assert s["per_class"]["negative"] == pytest.approx(
        {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    )
    assert s["per_class"]["neutral"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert scored.extracted == ["positive", "positive", "negative", "negative", None, "positive"]
    assert scored.correct == [True, True, False, True, False, False]
    assert list(metrics.headline(s)) == ["accuracy", "macro_f1", "weighted_f1"]


def test_perfect_and_all_wrong():
    targets = ["positive", "negative", "neutral", "neutral"]
    perfect = metrics.score(targets, targets, "f1").summary
    assert perfect["accuracy"] == perfect["macro_f1"] == perfect["weighted_f1"] == 1.0
    wrong = metrics.score(["negative", "neutral", "positive", "positive"], targets, "accuracy").summary
    assert wrong["accuracy"] == wrong["macro_f1"] == wrong["weighted_f1"] == 0.0


@pytest.mark.parametrize(
    ("targets", "kind"),
    [
        (["neutral", "positive", "neutral", "negative", "neutral", "positive"], "classification"),
        (["5.0", "0.019", "-3", "$1,200", "12%"], "numeric"),
        (["Return on equity.", "How fast an asset turns into cash.", "Revenue minus costs."], "exact"),
        (["yes", "no"], "classification"),
    ],
)
def test_auto_kind(targets, kind):
    assert metrics.kind_of("auto", targets) == kind


def test_forced_kinds():
    free = ["Return on equity.", "Revenue minus costs."]
    assert metrics.kind_of("accuracy", free) == metrics.kind_of("f1", free) == "classification"
    assert metrics.kind_of("exact", ["1", "2"]) == "exact"
    assert metrics.kind_of("numeric", free) == "numeric"


@pytest.mark.parametrize(
    ("prediction", "target", "tol", "match"),
    [
        ("The answer is 12.5%", "0.125", 0.01, True),  # percent vs fraction
        ("0.125", "12.5%", 0.01, True),
        ("$1,200.50", "1200.5", 0.01, True),
        ("-3.0", "-3", 0.01, True),
        ("0.02", "0.019", 0.01, False),  # 5% off
        ("0.02", "0.019", 0.1, True),
        ("about 100", "99.5", 0.01, True),
        ("no idea", "5.0", 0.01, False),
        ("2023 revenue was 5.0", "5.0", 0.01, False),  # the first number is the answer
    ],
)
def test_numeric_match(prediction, target, tol, match):
    assert metrics.numbers_match(prediction, target, tol) is match


def test_numeric_and_exact_scores():
    numeric = metrics.score(["5", "0.019", "n/a", "12%"], ["5.0", "0.02", "3.0", "0.12"], "auto")
    assert numeric.kind == "numeric"
    assert numeric.correct == [True, False, False, True]
    assert numeric.summary["numeric_match"] == 0.5 and numeric.summary["no_number"] == 1
    assert numeric.extracted == [5.0, 0.019, None, 12.0]
    exact = metrics.score(["Return on equity", "35"], ["return on equity.", "3.5"], "exact")
    assert exact.correct == [True, False] and exact.summary == {"exact_match": 0.5}


# ---------------------------------------------------------------- Trainer hooks


def test_token_accuracy_shifts_and_masks():
    import numpy as np

    # position t predicts the label at t + 1; -100 (prompt, padding) is not counted
    labels = np.array([[-100, -100, 5, 6, 7], [-100, 8, 9, -100, -100]])
    preds = np.array([[9, 5, 6, 0, 3], [8, 8, 1, 4, 4]])
    # row 0: 5==5, 6==6, 0!=7 -> 2 of 3; row 1: 8==8, 1!=9 -> 1 of 2
    assert eval_metrics.token_accuracy(preds, labels) == pytest.approx(3 / 5)


def test_preprocess_logits_keeps_argmax():
    import torch

    logits = torch.tensor([[[0.1, 2.0, -1.0], [3.0, 0.0, 0.5]]])
    assert eval_metrics.preprocess_logits_for_metrics(logits, None).tolist() == [[1, 0]]
    assert eval_metrics.preprocess_logits_for_metrics((logits,), None).tolist() == [[1, 0]]


@pytest.mark.slow
def test_training_logs_token_accuracy_and_generation_scores(trained_run):
    """The logged eval_token_accuracy equals a recount by hand on the final adapter, and eval_gen_accuracy
    equals `finetune eval`'s generation on the same sample; both reach the card's table."""
    import torch

    from finetune import config, data
    from finetune.data.tokenizer import load_tokenizer
    from finetune.inference import generate

    history = json.loads((trained_run / "trainer_state.json").read_text())["log_history"]
    evals = [e for e in history if "eval_loss" in e]
    assert len(evals) == 2
    assert all({"eval_token_accuracy", "eval_gen_accuracy", "eval_gen_macro_f1"} <= set(e) for e in evals)
    card = (trained_run / "README.md").read_text()
    assert "Token Accuracy" in card and "Gen Accuracy" in card and "Gen Macro F1" in card

    cfg = config.load(trained_run / "config.yml")
    eval_set = data.prepare(cfg, load_tokenizer(cfg)).eval
    loaded = generate.load(trained_run)
    right = total = 0
    with torch.no_grad():
        for row in eval_set:
            ids = torch.tensor([row["input_ids"]])
            labels = torch.tensor(row["labels"])[1:]
            preds = loaded.model(input_ids=ids).logits[0, :-1].argmax(-1)
            mask = labels != -100
            right += int((preds[mask] == labels[mask]).sum())
            total += int(mask.sum())
    assert evals[-1]["eval_token_accuracy"] == pytest.approx(right / total)

    prompts, targets = eval_metrics._generation_sample(cfg, loaded.tokenizer, eval_set)
    assert len(prompts) == 8 and set(targets) <= {"positive", "negative", "neutral"}
    stop = answer_format.stop_ids(cfg, cfg.datasets[0], loaded.tokenizer, loaded.model)
    answers = generation.generate_batch(loaded.model, loaded.tokenizer, prompts, 32, 4, stop)
    scored = metrics.score(answers, targets, "auto")
    assert evals[-1]["eval_gen_accuracy"] == pytest.approx(scored.summary["accuracy"])
    assert evals[-1]["eval_gen_macro_f1"] == pytest.approx(scored.summary["macro_f1"])


def test_eval_metrics_needs_evaluation_data(tmp_path):
    from finetune import config

    raw = {"base_model": "m/x", "adapter": "lora", "datasets": [{"path": "a/b"}], "eval_metrics": "auto"}
    with pytest.raises(config.ConfigError, match="eval_metrics: needs evaluation data"):
        config.validate(raw)
    assert config.validate({**raw, "val_set_size": 0.1}).eval_metrics_samples == 32
