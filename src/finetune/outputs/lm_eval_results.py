"""Where lm-evaluation-harness results live (eval_results.json under `lm_eval`) and how the card shows them.

`finetune eval --tasks` and `lm_eval_tasks` at the end of training (model/harness.py) save each task's result
by task and then by model, beside `finetune eval --data`'s `generation` key and the Trainer's `eval_*` keys:
`{"lm_eval": {"arc_easy": {"finetuned": {"metrics": {"acc,none": 0.61}, ...}, "base": {...}}}}`.
The card shows base → fine-tuned for every task and metric (the base's figures come from `--base-only`), and
the fine-tuned figures go into the model-index (the base's are not this model's).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.table import Table

from finetune.errors import UserError
from finetune.files import atomic_write_json

RESULTS_FILE = "eval_results.json"
RESULTS_KEY = "lm_eval"
SOURCE = ("lm-evaluation-harness", "https://github.com/EleutherAI/lm-evaluation-harness")


def save(out_dir: Path, results: dict[str, dict], who: str, model: str) -> dict:
    """Merge each task's result into out_dir/eval_results.json under lm_eval.<task>.<who>; other keys kept."""
    path = Path(out_dir) / RESULTS_FILE
    try:
        saved = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); move it aside") from None
    date = time.strftime("%Y-%m-%d %H:%M:%S")
    for task, entry in results.items():
        saved.setdefault(RESULTS_KEY, {}).setdefault(task, {})[who] = {**entry, "model": model, "date": date}
    atomic_write_json(path, saved)
    return saved


def saved(results: dict) -> dict:
    """lm_eval results of a run's merged results (run_dir.Run.results), by task."""
    found = results.get(RESULTS_KEY)
    return found if isinstance(found, dict) else {}


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "" if value is None else str(value)


def _label(key: str) -> str:
    """lm-eval's `acc,none` / `exact_match,strict-match` as `acc` / `exact_match (strict-match)`."""
    metric, _, filt = key.partition(",")
    return metric if filt in ("", "none") else f"{metric} ({filt})"


def rows(results: dict) -> list[tuple[str, str, dict]]:
    """(task, metric label, {who: value}) for every task and metric, in the order lm-eval gave them."""
    out = []
    for task, by_model in saved(results).items():
        keys = list(dict.fromkeys(k for e in by_model.values() for k in e.get("metrics", {})))
        for key in keys:
            out.append(
                (task, _label(key), {who: e.get("metrics", {}).get(key) for who, e in by_model.items()})
            )
    return out


def before_after(values: dict) -> str:
    """`0.4000 → 0.6000` when both were scored, else the one there is."""
    base, tuned = values.get("base"), values.get("finetuned")
    if base is not None and tuned is not None:
        return f"{_fmt(base)} → {_fmt(tuned)}"
    return _fmt(tuned if tuned is not None else base) + (" (base)" if tuned is None else "")


def console_table(results: dict, tasks: list[str]):
    table = Table(title="lm-evaluation-harness")
    for column in ("task", "metric", "base → fine-tuned"):
        table.add_column(column, justify="right" if column.startswith("base") else "left")
    for task, label, values in rows(results):
        if task in tasks:
            table.add_row(task, label, before_after(values))
    return table


def model_index(results: dict) -> list[dict]:
    """EvalResult arguments for the fine-tuned model's lm-eval scores."""
    out = []
    for task, by_model in saved(results).items():
        entry = by_model.get("finetuned")
        for key, value in (entry or {}).get("metrics", {}).items():
            shots = entry.get("num_fewshot")
            detail = ", ".join(
                p for p in (f"{entry['samples']} rows" if entry.get("samples") else "",
                            f"{shots}-shot" if shots is not None else "") if p
            )  # fmt: skip
            out.append({
                "task_type": "text-generation", "dataset_type": task, "dataset_name": task,
                "metric_type": key.partition(",")[0], "metric_name": f"{_label(key)}{f' ({detail})' if detail else ''}",
                "metric_value": value, "source_name": SOURCE[0], "source_url": SOURCE[1],
            })  # fmt: skip
    return out


def card_section(results: dict) -> list[str]:
    """Markdown: one row per task and metric, base → fine-tuned."""
    found = rows(results)
    if not found:
        return []
    by_task = saved(results)
    parts = ["### lm-evaluation-harness", "",
             "Scored by [lm-evaluation-harness](https://github.com/EleutherAI/lm-evaluation-harness) (`finetune eval "
             "--tasks`, or `lm_eval_tasks` at the end of training) on the model as trained; the base model's "
             "figures come from `--base-only`.", "",
             "| task | metric | rows | shots | base → fine-tuned |", "|---|---|---:|---:|---:|"]  # fmt: skip
    for task, label, values in found:
        entry = by_task[task].get("finetuned") or next(iter(by_task[task].values()))
        shots = entry.get("num_fewshot")
        parts.append(
            f"| {task} | {label} | {_fmt(entry.get('samples'))} | {_fmt(shots)} | {before_after(values)} |"
        )
    return [*parts, ""]
