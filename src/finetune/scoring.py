"""Scoring generated answers against targets: pure Python, shared by `finetune eval`, the card's results and
the training-time generation metrics (train/eval_metrics.py).

Answers are compared after `normalize` (case, whitespace, punctuation). Three kinds of task:

- classification (a small label set, as FinLoRA's sentiment sets): the prediction's label is the first label
  of the set (the distinct targets) found in the answer; accuracy, macro-F1 and weighted-F1 (FinLoRA reports
  both for sentiment), and precision/recall/F1 by class. Equal to scikit-learn's
  `f1_score(labels=<the label set>, zero_division=0)`: an answer naming no label counts against its class.
- exact: normalized answer == normalized target.
- numeric: the first number of the answer equals the target's within a relative tolerance (1% by default);
  `12%` and `0.12` match each other.

`kind_of("auto", targets)` picks one from the targets.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

METRICS = ("auto", "accuracy", "f1", "exact", "numeric")
MAX_LABELS = 20  # more distinct targets than this is free text, not a label set
MAX_LABEL_WORDS = 4

_PUNCT = re.compile(r"(?<!\d)[^\w\s]|[^\w\s](?!\d)")  # punctuation, but not a point or comma inside a number
_NUMBER = re.compile(r"[-+]?\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?%?|[-+]?\$?\.\d+%?")


def normalize(text: str) -> str:
    """Lower case, punctuation dropped (kept inside numbers: 3.5, 1,200), whitespace collapsed."""
    return " ".join(_PUNCT.sub(" ", text.lower().replace("_", " ")).split())


# ---------------------------------------------------------------- task kinds


def parse_number(text: str) -> tuple[float, bool] | None:
    """(value, written as a percentage) of the first number in `text`; `$1,200.5` -> (1200.5, False)."""
    match = _NUMBER.search(text)
    if match is None:
        return None
    token = match.group(0)
    percent = token.endswith("%")
    return float(token.replace("$", "").replace(",", "").rstrip("%")), percent


def is_number(text: str) -> bool:
    """The whole text is one number (an answer for the numeric metric)."""
    return _NUMBER.fullmatch(text.strip().rstrip(".")) is not None


def kind_of(metric: str, targets: list[str]) -> str:
    """`classification`, `numeric` or `exact`: what `metric` (one of METRICS) means for these targets."""
    if metric in ("accuracy", "f1"):
        return "classification"
    if metric in ("exact", "numeric"):
        return metric
    if targets and all(is_number(t) for t in targets):
        return "numeric"
    labels = label_set(targets)
    if (
        targets
        and len(labels) <= MAX_LABELS
        and len(labels) <= max(2, len(targets) // 2)  # labels repeat; free-text answers do not
        and all(len(label.split()) <= MAX_LABEL_WORDS for label in labels)
    ):
        return "classification"
    return "exact"


def label_set(targets: list[str]) -> list[str]:
    """The distinct normalized targets, in order of first appearance."""
    return [label for label in dict.fromkeys(normalize(t) for t in targets) if label]


def extract_label(prediction: str, labels: list[str]) -> str | None:
    """The label that appears first in the answer as whole words (the longest one on a tie), else None."""
    text = normalize(prediction)
    best: tuple[int, int, str] | None = None
    for label in labels:
        match = re.search(rf"(?<!\w){re.escape(label)}(?!\w)", text)
        if match and (best is None or (match.start(), -len(label)) < best[:2]):
            best = (match.start(), -len(label), label)
    return best[2] if best else None


def numbers_match(prediction: str, target: str, rel_tol: float = 0.01) -> bool:
    """The answer's first number equals the target's within rel_tol; 12% equals 0.12."""
    got, want = parse_number(prediction), parse_number(target)
    if got is None or want is None:
        return False
    (a, a_pct), (b, b_pct) = got, want

    def close(x: float, y: float) -> bool:
        return math.isclose(x, y, rel_tol=rel_tol, abs_tol=1e-9)

    if a_pct != b_pct:
        return close(a / 100, b) if a_pct else close(a, b / 100)
    return close(a, b)


# ---------------------------------------------------------------- scores


def classification_report(predicted: list[str | None], targets: list[str], labels: list[str]) -> dict:
    """accuracy, macro_f1, weighted_f1 and per-class precision/recall/f1/support over `labels`."""
    per_class = {}
    for label in labels:
        tp = sum(p == label and t == label for p, t in zip(predicted, targets, strict=True))
        fp = sum(p == label and t != label for p, t in zip(predicted, targets, strict=True))
        support = sum(t == label for t in targets)
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    n = len(targets)
    return {
        "accuracy": sum(p == t for p, t in zip(predicted, targets, strict=True)) / n if n else 0.0,
        "macro_f1": sum(c["f1"] for c in per_class.values()) / len(per_class) if per_class else 0.0,
        "weighted_f1": sum(c["f1"] * c["support"] for c in per_class.values()) / n if n else 0.0,
        "no_label": sum(p is None for p in predicted),
        "per_class": per_class,
    }


@dataclass(frozen=True)
class Scored:
    kind: str  # classification | exact | numeric
    summary: dict  # the metrics (headline first)
    extracted: list  # per answer: its label (classification), number (numeric) or normalized text
    correct: list[bool]


def score(predictions: list[str], targets: list[str], metric: str = "auto", rel_tol: float = 0.01) -> Scored:
    """Score answers against targets (same order) as `metric` says (one of METRICS)."""
    kind = kind_of(metric, targets)
    if kind == "classification":
        labels = label_set(targets)
        predicted = [extract_label(p, labels) for p in predictions]
        wanted = [normalize(t) for t in targets]
        summary = classification_report(predicted, wanted, labels)
        correct = [p == t for p, t in zip(predicted, wanted, strict=True)]
        return Scored(kind, summary, predicted, correct)
    n = len(targets) or 1
    if kind == "numeric":
        correct = [numbers_match(p, t, rel_tol) for p, t in zip(predictions, targets, strict=True)]
        numbers = [parse_number(p) for p in predictions]
        summary = {
            "numeric_match": sum(correct) / n,
            "tolerance": rel_tol,
            "no_number": sum(x is None for x in numbers),
        }
        return Scored(kind, summary, [x[0] if x else None for x in numbers], correct)
    normalized = [normalize(p) for p in predictions]
    correct = [p == normalize(t) for p, t in zip(normalized, targets, strict=True)]
    return Scored(kind, {"exact_match": sum(correct) / n}, normalized, correct)


def headline(summary: dict) -> dict[str, float]:
    """The scalar metrics of a summary (what the card's model-index and the training logs show)."""
    keys = ("accuracy", "macro_f1", "weighted_f1", "exact_match", "numeric_match")
    return {k: summary[k] for k in keys if k in summary}
