"""One run in full for its page: the curves from metrics.jsonl, live progress, eval results, predictions, the
card and config.yml — all read from files (the run may be training in another process right now)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from finetune.studio import runs

SERIES = ("loss", "eval_loss", "learning_rate", "grad_norm")


def metrics(folder: Path) -> list[dict]:
    """metrics.jsonl's entries (a half-written last line is skipped: the writer appends as it trains)."""
    out = []
    try:
        text = (folder / "metrics.jsonl").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict) and "step" in entry:
            out.append(entry)
    return out


def curves(entries: list[dict]) -> dict[str, list[list[float]]]:
    """{name: [[step, value], ...]} for loss, eval_loss, learning_rate and grad_norm; after a resume, the
    later line of a step wins (a resumed run logs the steps after its checkpoint again)."""
    out: dict[str, dict[int, float]] = {name: {} for name in SERIES}
    for entry in entries:
        for name in SERIES:
            value = entry.get(name)
            if isinstance(value, int | float):
                out[name][entry["step"]] = value
    return {name: [[s, v] for s, v in sorted(points.items())] for name, points in out.items() if points}


def progress(row: runs.RunRow, entries: list[dict]) -> dict:
    """Step of total, ETA (from the pace of the recent logged steps), tokens/s and the latest loss."""
    # the heartbeat is written every few seconds, metrics.jsonl at every logged step: the later of the two
    step = max(row.step or 0, entries[-1]["step"] if entries else 0)
    timed = [e for e in entries if "time" in e and "loss" in e]
    eta = tokens_per_second = None
    if len(timed) >= 2:
        first, last = timed[max(0, len(timed) - 6)], timed[-1]
        steps = last["step"] - first["step"]
        if steps > 0 and row.total:
            eta = (last["time"] - first["time"]) / steps * max(0, row.total - step)
    for e in reversed(entries):
        for key in ("train_tokens_per_second", "tokens_per_second"):
            if isinstance(e.get(key), int | float):
                tokens_per_second = e[key]
                break
        if tokens_per_second is not None:
            break
    return {
        "status": row.status,
        "reason": row.reason,
        "step": step,
        "total": row.total,
        "eta_seconds": round(eta, 1) if eta is not None else None,
        "tokens_per_second": tokens_per_second,
        "loss": row.train_loss,
        "eval_loss": row.eval_loss,
        "updated": time.time(),
    }


def eval_results(folder: Path) -> dict:
    """eval_results.json's `generation` section: {data name: {"finetuned"|"base": entry}}."""
    try:
        return runs.read_json(folder / "eval_results.json").get("generation") or {}
    except ValueError:
        return {}


def predictions(folder: Path, name: str, limit: int = 200) -> list[dict]:
    """Rows of a predictions_*.jsonl file, mistakes first (then by line), at most `limit` (0: all)."""
    path = folder / name
    if not (name.startswith("predictions_") and name.endswith(".jsonl")) or not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    rows.sort(key=lambda r: (bool(r.get("correct")), r.get("line", 0)))
    return rows[:limit] if limit else rows


def confusion(rows: list[dict]) -> dict:
    """{labels, matrix[true][predicted]} from a classification eval's predictions (parsed label vs target);
    {} for free-text answers. Unparsed answers are the column `(none)`."""
    targets = sorted({str(r.get("target")) for r in rows})
    if not rows or len(targets) > 20 or any("parsed" not in r for r in rows):
        return {}
    columns = [*targets, "(none)"]
    matrix = [[0] * len(columns) for _ in targets]
    for r in rows:
        parsed = r.get("parsed")
        column = columns.index(str(parsed)) if str(parsed) in targets else len(targets)
        matrix[targets.index(str(r.get("target")))][column] += 1
    return {"labels": targets, "columns": columns, "matrix": matrix}


def prediction_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("predictions_*.jsonl"))


def text_file(folder: Path, name: str, limit: int = 200_000) -> str:
    try:
        return (folder / name).read_text(encoding="utf-8", errors="replace")[:limit]
    except OSError:
        return ""


def config_diff(configs: dict[str, dict]) -> dict[str, dict[str, str]]:
    """{key path: {run: value}} for the keys whose values differ between the runs (finetune_versions aside)."""
    flat = {name: _flatten(cfg) for name, cfg in configs.items()}
    keys = sorted(set().union(*flat.values())) if flat else []
    out = {}
    for key in keys:
        if key.startswith("finetune_versions"):
            continue
        values = {name: flat[name].get(key, "—") for name in flat}
        if len(set(values.values())) > 1:
            out[key] = values
    return out


def _flatten(value, prefix: str = "") -> dict[str, str]:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(value, list) and value and any(isinstance(v, dict) for v in value):
        out = {}
        for i, v in enumerate(value):
            out.update(_flatten(v, f"{prefix}.{i}"))
        return out
    return {prefix: json.dumps(value, ensure_ascii=False)}
