"""The runs under the Studio's root: found, summarised (one row each) and read in detail for a run's page.

A run folder is read, never executed: config.yml is parsed as plain YAML (no `config.load`, which would check
paths and, for rl: grpo, look up reward modules), JSON files as JSON. Anything unreadable becomes the row's
reason, never an exception. Rows are cached by the folder's files' modification times, so a root of hundreds of
runs lists in well under a second after the first look (and the first look reads only small files:
`benchmarks/studio.py`).

Status: `running` (status.json's pid is alive and is a finetune process), `finished` (all_results.json),
`interrupted` (a checkpoint to resume from), `failed` (none of those), `unreadable` (with the reason).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from finetune.outputs.run_dir import CHECKPOINT

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: 10x faster on hundreds of configs
MARKERS = ("config.yml", "status.json", "metrics.jsonl", "trainer_state.json")
SKIP = {".studio", ".git", "__pycache__", ".venv", "node_modules", "models", "data"}
MAX_DEPTH = 4
METRIC_KEYS = ("macro_f1", "accuracy", "exact_match", "numeric_match", "weighted_f1")


@dataclass
class RunRow:
    """One row of the runs table."""

    name: str  # path relative to the root: the run's id in URLs
    status: str
    reason: str = ""
    base: str = ""
    method: str = ""
    step: int | None = None
    total: int | None = None
    train_loss: float | None = None
    eval_loss: float | None = None
    metric: str = ""  # "macro_f1 0.81 (test)"
    started: float | None = None
    duration: float | None = None
    peak_memory_mb: float | None = None
    pid: int | None = None
    extra: dict = field(default_factory=dict)

    def as_json(self) -> dict:
        return asdict(self)


def find(root: Path) -> list[Path]:
    """Run folders under root (not inside another run, a checkpoint or a hidden folder), sorted by path."""
    found: list[Path] = []

    def walk(folder: Path, depth: int) -> None:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            return
        names = {e.name for e in entries}
        has_checkpoint = any(CHECKPOINT.match(n) for n in names)
        merged = "config.json" in names and "metrics.jsonl" not in names  # a `finetune merge` folder
        if (any(m in names for m in MARKERS) or has_checkpoint) and not merged:
            found.append(folder)
            return
        if depth >= MAX_DEPTH:
            return
        for e in entries:
            if e.is_dir(follow_symlinks=False) and not e.name.startswith(".") and e.name not in SKIP:
                walk(Path(e.path), depth + 1)

    walk(root, 0)
    return sorted(found)


def read_json(path: Path) -> dict:
    """A JSON object from path; {} when absent. Raises ValueError naming the file when it is not valid JSON."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path.name}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path.name}: expected a JSON object")
    return value


def read_config(folder: Path) -> dict:
    """config.yml as a plain mapping (safe loader; nothing imported); ValueError saying why it cannot be read."""
    path = folder / "config.yml"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError("no config.yml (half-written, or not a finetune run)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"config.yml: cannot read ({exc.__class__.__name__})") from None
    try:
        raw = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise ValueError(f"config.yml: invalid YAML{at}") from None
    if not isinstance(raw, dict):
        raise ValueError("config.yml: not a mapping of keys")
    return raw


def alive(pid: int | None) -> bool:
    """True when pid is a live finetune process (a pid reused by another program does not count)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return True  # no /proc (macOS): trust the pid
    return b"finetune" in cmdline and state != "Z"  # a zombie has exited; its parent has not reaped it yet


def method_of(cfg: dict) -> str:
    rl = cfg.get("rl")
    kind = "reward model" if cfg.get("reward_model") else (str(rl) if rl else "sft")
    return f"{kind} · {cfg.get('adapter') or 'full'}"


def main_metric(evals: dict) -> str:
    """The first of macro F1 / accuracy / exact / numeric match of the fine-tuned model in eval_results.json."""
    for data_name, by_model in (evals.get("generation") or {}).items():
        entry = (by_model or {}).get("finetuned") or {}
        for key in METRIC_KEYS:
            if isinstance(entry.get(key), int | float):
                return f"{key} {entry[key]:.3f} ({data_name})"
    return ""


def summarise(root: Path, folder: Path) -> RunRow:
    """One row for a run folder; any unreadable part turns it into an `unreadable` row saying why."""
    name = folder.relative_to(root).as_posix()
    try:
        return _summarise(name, folder)
    except ValueError as exc:
        return RunRow(name, "unreadable", reason=str(exc))
    except OSError as exc:
        return RunRow(name, "unreadable", reason=f"{exc.__class__.__name__}: {exc.strerror or exc}")


def _summarise(name: str, folder: Path) -> RunRow:
    status = read_json(folder / "status.json")
    cfg = read_config(folder)
    results = read_json(folder / "all_results.json")
    evals = read_json(folder / "eval_results.json")
    ckpts = [p for p in folder.iterdir() if p.is_dir() and CHECKPOINT.match(p.name)]
    row = RunRow(name, "failed", base=str(cfg.get("base_model", "")), method=method_of(cfg))
    row.pid = status.get("pid")
    row.step, row.total = status.get("step"), status.get("max_steps")
    row.started = status.get("started")
    if row.started and status.get("heartbeat"):
        row.duration = status["heartbeat"] - row.started
    if results:
        row.status = "finished"
        row.step = results.get("global_step", row.step)
        row.train_loss = results.get("final_train_loss")
        row.eval_loss = results.get("final_eval_loss", results.get("eval_loss"))
        row.duration = results.get("train_runtime", row.duration)
        row.peak_memory_mb = results.get("peak_gpu_memory_mb", results.get("peak_cpu_memory_mb"))
        row.total = row.total or row.step
    elif status.get("state") == "running" and alive(row.pid):
        row.status = "running"
    elif ckpts:
        row.status = "interrupted"
        row.reason = "resumable from " + max(ckpts, key=lambda p: int(p.name.split("-")[1])).name
    else:
        row.reason = "no results and no checkpoint" + (
            " (the process is gone)" if status.get("state") == "running" else ""
        )
    if row.train_loss is None:
        row.train_loss, row.eval_loss = last_losses(folder / "metrics.jsonl", row.eval_loss)
    row.metric = main_metric(evals)
    return row


def last_losses(path: Path, eval_loss: float | None) -> tuple[float | None, float | None]:
    """The latest training and eval loss in metrics.jsonl, reading only its last 8 KiB."""
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, 2) - 8192))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None, eval_loss
    train = None
    for line in reversed(lines):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if train is None and "loss" in entry:
            train = entry["loss"]
        if eval_loss is None and "eval_loss" in entry:
            eval_loss = entry["eval_loss"]
        if train is not None and eval_loss is not None:
            break
    return train, eval_loss


class RunIndex:
    """Rows cached by each folder's fingerprint (names and modification times of its files): a listing reads
    only the runs that changed since the last one. A running row is always re-read (its pid may have died)."""

    def __init__(self, root: Path):
        self.root = root
        self.cache: dict[Path, tuple[tuple, RunRow]] = {}

    def rows(self) -> list[RunRow]:
        out = []
        for folder in find(self.root):
            key = fingerprint(folder)
            cached = self.cache.get(folder)
            if cached and cached[0] == key and cached[1].status != "running":
                out.append(cached[1])
                continue
            row = summarise(self.root, folder)
            self.cache[folder] = (key, row)
            out.append(row)
        return out


def fingerprint(folder: Path) -> tuple:
    try:
        return tuple(sorted((e.name, e.stat().st_mtime_ns) for e in os.scandir(folder)))
    except OSError:
        return ()
