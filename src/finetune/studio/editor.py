"""The new-run page's answers: `config.loads`'s messages at their lines, the plan for a device
(`plan.report.make_plan`), the data preview (`data.prepare` + `data.report.segments`, what `preprocess
--inspect` prints) and the start (the config saved under configs/, then `finetune train` as a job)."""

from __future__ import annotations

import re
from pathlib import Path

from finetune import data, hub, methods
from finetune.config import loads, yaml_io
from finetune.data.report import segments
from finetune.data.tokenizer import load_tokenizer
from finetune.errors import UserError
from finetune.files import atomic_write_text
from finetune.plan import report
from finetune.studio import security

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,80}$")


def messages(text: str, source: str) -> tuple[object | None, list[dict]]:
    """(the Config or None, [{line, message}]): every problem `config.loads` finds, at its line (0: none)."""
    try:
        return loads(text, source), []
    except UserError as exc:
        return None, [{"line": yaml_io.line_of(p) or 0, "message": p} for p in exc.problems]


def plan(cfg, device: str | None, gpus: int) -> dict:
    """The plan's JSON with readable part names, or {"error": line}."""
    try:
        offline = hub.offline_if_unreachable([cfg.base_model] if cfg.base_model in cfg.hub_ids else [])
        result = report.make_plan(cfg, report.device_for(device, gpus, None), gpus)
    except UserError as exc:
        return {"error": "; ".join(exc.problems)}
    out = result.as_json()
    out["labels"] = {k: report.LABELS.get(k, k) for k in out["parts"]}
    if offline:
        out["notes"].append(offline)
    return out


def preview(cfg, rows: int = 3) -> dict:
    """The first rows as trained: [[text, trained], ...] each (SFT formats; the others say where to look)."""
    if not methods.of(cfg).answers:
        return {
            "error": "the preview shows SFT rows; run `finetune preprocess CONFIG --inspect 3` for this method"
        }
    try:
        tokenizer = load_tokenizer(cfg)
        prepared = data.prepare(cfg, tokenizer)  # the cache train reuses: nothing is tokenized twice
    except UserError as exc:
        return {"error": "; ".join(exc.problems)}
    out = []
    for i in range(min(rows, len(prepared.train))):
        row = prepared.train[i]
        parts = segments(row["input_ids"], row["labels"], tokenizer)
        out.append({"tokens": len(row["input_ids"]), "segments": parts})
    return {"rows": out, "train_rows": len(prepared.train)}


def save_for_start(root: Path, name: str, text: str) -> tuple[str, str]:
    """Write configs/NAME.yml (new, or unchanged) for a run; returns (config path, output_dir), both relative
    to root. Refuses a config with problems, an output_dir outside root or one that already holds a run."""
    if not NAME.match(name):
        raise security.Refused(400, f"name {name!r}: letters, digits, '.', '_' and '-' only")
    relative = f"configs/{name}.yml"
    cfg, problems = messages(text, relative)
    if problems:
        raise security.Refused(400, problems[0]["message"])
    output_dir = security.inside(root, cfg.output_dir)
    if output_dir.is_dir() and any(output_dir.iterdir()):
        raise security.Refused(
            409, f"output_dir: {cfg.output_dir} already holds a run; choose another output_dir"
        )
    path = root / relative
    if path.exists() and path.read_text(encoding="utf-8") != text:
        raise security.Refused(409, f"{relative} exists with other content: choose another name")
    atomic_write_text(path, text)
    return relative, output_dir.relative_to(root.resolve()).as_posix()


def starting_points(root: Path, run_names: list[str]) -> list[str]:
    """What the editor can start from, relative to root: examples/*.yaml, configs/*.yml and every run's
    config.yml (the page reads only files inside the root)."""
    out = []
    for folder in ("examples", "configs"):
        if (root / folder).is_dir():
            out += [p.relative_to(root).as_posix() for p in sorted((root / folder).glob("*.y*ml"))]
    return out + [f"{n}/config.yml" for n in run_names]
