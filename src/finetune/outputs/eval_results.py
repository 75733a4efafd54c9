"""Where `finetune eval` results live, and how they are shown (console table, card table, model-index).

The Trainer's eval_results.json holds eval_loss etc. (its `eval_*` keys); `finetune eval` never touches
those: it adds its results to the same file under one key, `generation` (RESULTS_KEY), by data file stem and
then by model: `{"generation": {"fpb_test": {"finetuned": {...}, "base": {...}}}}`. The card (card/__init__.py) reads it (through
run_dir.read_run, which merges eval_results.json into run.results): the fine-tuned scores go into the
model-index (the base model's are not this model's), and a before/after table into Results. Retraining into
the same output_dir rewrites eval_results.json, so old scores go with the old adapter.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.table import Table

from finetune import scoring
from finetune.errors import UserError
from finetune.files import atomic_write_json

RESULTS_FILE = "eval_results.json"
RESULTS_KEY = "generation"
_NAMES = {  # metric -> (model-index metric_type, metric_config, label)
    "accuracy": ("accuracy", None, "Accuracy"),
    "macro_f1": ("f1", "macro", "Macro F1"),
    "weighted_f1": ("f1", "weighted", "Weighted F1"),
    "exact_match": ("exact_match", None, "Exact match"),
    "numeric_match": ("numeric_match", None, "Numeric match"),
}


def save_results(out_dir: Path, name: str, who: str, entry: dict) -> dict:
    """Merge `entry` into out_dir/eval_results.json under generation.<name>.<who>; other keys are kept."""
    path = out_dir / RESULTS_FILE
    try:
        results = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); move it aside") from None
    results.setdefault(RESULTS_KEY, {}).setdefault(name, {})[who] = entry
    atomic_write_json(path, results)
    return results


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _rows(by_model: dict) -> list[tuple[str, dict]]:
    """(label, {who: value}) rows: headline metrics, then F1 by class."""
    rows = []
    keys = list(dict.fromkeys(k for e in by_model.values() for k in scoring.headline(e)))
    for key in keys:
        rows.append((_NAMES[key][2], {who: e.get(key) for who, e in by_model.items()}))
    classes = list(dict.fromkeys(c for e in by_model.values() for c in e.get("per_class", {})))
    for c in classes:
        rows.append(
            (f"F1 {c}", {who: e.get("per_class", {}).get(c, {}).get("f1") for who, e in by_model.items()})
        )
    for key, label in (("no_label", "answers naming no label"), ("no_number", "answers without a number")):
        if any(key in e for e in by_model.values()):
            rows.append((label, {who: e.get(key) for who, e in by_model.items()}))
    rows.append(("examples", {who: e.get("examples") for who, e in by_model.items()}))
    return rows


def _order(by_model: dict) -> list[str]:
    return [w for w in ("base", "finetuned") if w in by_model]


def results_table(name: str, by_model: dict):
    table = Table(title=f"{name} ({next(iter(by_model.values()))['task']})")
    table.add_column("metric")
    for who in _order(by_model):
        table.add_column(who, justify="right")
    for label, values in _rows(by_model):
        table.add_row(
            label, *(_fmt(values[w]) if values.get(w) is not None else "" for w in _order(by_model))
        )
    return table


def saved(run) -> dict:
    """generation results of a run (run_dir.Run), by data name."""
    found = run.results.get(RESULTS_KEY)
    return found if isinstance(found, dict) else {}


def model_index(run) -> list[dict]:
    """EvalResult arguments for the fine-tuned model's scores (the base's are not this model's)."""
    out = []
    for name, by_model in saved(run).items():
        entry = by_model.get("finetuned")
        for key, value in scoring.headline(entry or {}).items():
            metric_type, config, label = _NAMES[key]
            out.append({
                "task_type": "text-generation", "dataset_type": name, "dataset_name": name,
                "dataset_split": "test", "metric_type": metric_type, "metric_config": config,
                "metric_name": f"{label} ({entry['examples']} examples, greedy)", "metric_value": value,
            })  # fmt: skip
    return out


def card_section(run) -> list[str]:
    """Markdown: one table per evaluated data file, base and fine-tuned side by side."""
    found = saved(run)
    if not found:
        return []
    parts = ["### Evaluation by generation", "",
             "Greedy answers in the training prompt format (`finetune eval`), normalized before scoring.", ""]  # fmt: skip
    for name, by_model in found.items():
        order = _order(by_model)
        head = {"base": "base model", "finetuned": "fine-tuned"}
        parts += [f"`{name}` ({next(iter(by_model.values()))['task']}):", ""]
        parts += ["| metric | " + " | ".join(head[w] for w in order) + " |", "|---|" + "---:|" * len(order)]
        for label, values in _rows(by_model):
            parts.append(
                f"| {label} | "
                + " | ".join(_fmt(values[w]) if values.get(w) is not None else "" for w in order)
                + " |"
            )
        parts.append("")
    return parts
