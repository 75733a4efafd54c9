"""`finetune eval`: score a run's greedy answers on a JSONL file, in the format it trained on.

    finetune eval outputs/fpb --data data/fpb_test.jsonl --limit 200
    finetune eval outputs/fpb --data data/fpb_test.jsonl --limit 200 --base-only     # the "before"

Each row becomes the prompt training would have built from it (generate.prompt_ids), generated greedily in
batches (left padding, longest prompts first, stopping at EOS/end-of-turn), then scored by scoring.score.

Results are merged into OUTPUT_DIR/eval_results.json under the key `generation`, beside the Trainer's
`eval_*` keys (layout: eval_results.py), and the card is rewritten so they reach its model-index.
Predictions go to predictions_<data stem>[_base].jsonl (line, input, target, prediction, parsed, correct).
"""

from __future__ import annotations

import csv
import io
import json
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from finetune import scoring
from finetune.config import PreferenceType
from finetune.data import answer_format, formats, render
from finetune.errors import UserError
from finetune.files import atomic_write_text
from finetune.inference import generate
from finetune.model import generation
from finetune.outputs import card, eval_results


@dataclass(frozen=True)
class Example:
    line: int  # 1-based line in the data file
    input: str
    target: str
    prompt: list[int]


# ---------------------------------------------------------------- data -> prompts


def read_rows(path: Path, limit: int | None = None) -> list[tuple[int, dict]]:
    """(line number, row) of the first `limit` rows of a JSONL, JSON (array of objects) or CSV file.

    Rows keep the line they start on, so a bad one is reported as file:line whatever the format. Our own
    reader rather than `datasets` (data/sources.py): datasets' JSON/CSV loaders drop line numbers, and an eval
    file is small enough that Arrow brings nothing.
    """
    if not path.is_file():
        raise UserError(f"--data {path}: file not found")
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        rows = _csv_rows(text, limit)
    elif suffix == ".json" and text.lstrip().startswith("["):
        rows = _json_array_rows(path, text, limit)
    elif suffix in (".jsonl", ".json", ".ndjson"):
        rows = _jsonl_rows(path, text, limit)
    else:
        raise UserError(f"--data {path}: expected a .jsonl, .json or .csv file")
    if not rows:
        raise UserError(f"--data {path}: no rows")
    return rows


def _object(path: Path, n: int, row) -> dict:
    if not isinstance(row, dict):
        raise UserError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
    return row


def _jsonl_rows(path: Path, text: str, limit: int | None) -> list[tuple[int, dict]]:
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if limit is not None and len(rows) >= limit:
            break
        if not line.strip():
            continue
        try:
            rows.append((n, _object(path, n, json.loads(line))))
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
    return rows


def _json_array_rows(path: Path, text: str, limit: int | None) -> list[tuple[int, dict]]:
    """The objects of a JSON array, each with the line it starts on (decoded one by one to know it)."""
    decoder, rows = json.JSONDecoder(), []
    pos = text.index("[") + 1
    while limit is None or len(rows) < limit:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            break
        n = text.count("\n", 0, pos) + 1
        try:
            row, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
        rows.append((n, _object(path, n, row)))
    return rows


def _csv_rows(text: str, limit: int | None) -> list[tuple[int, dict]]:
    reader = csv.DictReader(io.StringIO(text))
    rows = []
    start = 2  # the header is line 1; a quoted field may span lines, so each row starts where the last ended
    for row in reader:
        if limit is not None and len(rows) >= limit:
            break
        rows.append((start, {k: v for k, v in row.items() if k is not None}))
        start = reader.line_num + 1
    return rows


def _field(row: dict, key: str, option: str) -> str:
    value = row.get(key)
    if value is None:
        raise formats.RowError(f"missing field '{key}' (choose the column with {option})")
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return formats.text_value(row, key)


@contextmanager
def _at_line(path: Path, line: int):
    """A bad row (RowError, or a UserError from the format) is reported as one line at path:line."""
    try:
        yield
    except formats.RowError as exc:
        raise UserError(f"{path}:{line}: {exc}") from None
    except UserError as exc:
        raise UserError(f"{path}:{line}: {str(exc).removeprefix('row: ')}") from None


def examples(loaded, rows, path: Path, field_input: str | None, field_target: str | None) -> list[Example]:
    """Rows as prompts in the training format. Without --field-*, rows are read in the training data's
    layout; with them, the named columns fill the format's question and answer."""
    cfg, ds, tok = loaded.cfg, loaded.dataset, loaded.tokenizer
    if isinstance(ds.type, PreferenceType):
        return _preference_examples(loaded, rows, path, field_input, field_target)
    kind = answer_format.format_kind(ds)
    spec = formats.build_format(cfg, ds, "datasets[0]", tok).spec
    if kind == "completion" and not field_target:
        raise UserError("--field-target: this run trained on raw text (completion): name the answer column")
    out = []
    for line, row in rows:
        with _at_line(path, line):
            if kind == "chat":
                if field_input or field_target:
                    q, a = (
                        _field(row, field_input or "input", "--field-input"),
                        _field(row, field_target or "target", "--field-target"),
                    )
                    row = {
                        spec.field_messages: [
                            {spec.role_key: "user", spec.content_key: q},
                            {spec.role_key: "assistant", spec.content_key: a},
                        ]
                    }
                messages, target = render(cfg, ds, row, tok)
                question = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
            elif kind == "input_output":
                if field_input or field_target:
                    question = _field(row, field_input or "input", "--field-input")
                    target = _field(row, field_target or "target", "--field-target")
                    prefix = [question]
                else:  # the row's own segments: the text before the first trained one asks; trained = answer
                    prefix, target = formats.prompt_and_answer(formats.segments(spec, row))
                    question = "".join(prefix)
                row = {spec.field: [{"label": False, "text": text} for text in prefix]}
            else:
                question = _field(row, field_input or spec.field_instruction, "--field-input")
                target = _field(row, field_target or spec.field_output, "--field-target")
                row = {**row, spec.field_instruction: question}
                if spec.field_output:
                    row[spec.field_output] = target
            ids = generate.prompt_ids(cfg, ds, row, tok)
        out.append(Example(line, question, target, ids))
    return out


def _preference_examples(loaded, rows, path: Path, field_input: str | None, field_target: str | None):
    """A DPO run (preference.py): prompts in its pairs' prompt_format; the chosen answer is the target."""
    t = loaded.dataset.type
    out = []
    for line, row in rows:
        with _at_line(path, line):
            question = _field(row, field_input or t.field_prompt, "--field-input")
            target = _field(row, field_target or t.field_chosen, "--field-target")
            ids = generate.prompt_ids(
                loaded.cfg, loaded.dataset, {**row, t.field_prompt: question}, loaded.tokenizer
            )
        out.append(Example(line, question, target, ids))
    return out


# ---------------------------------------------------------------- generation


# ---------------------------------------------------------------- the command


def run(
    path: str | Path,
    data: str | Path,
    field_input: str | None = None,
    field_target: str | None = None,
    metric: str = "auto",
    limit: int | None = None,
    batch_size: int = 8,
    max_new_tokens: int | None = None,
    base_only: bool = False,
    out: str | Path | None = None,
    tolerance: float = 0.01,
    console=None,
    dataset_index: int = 0,
    trust_remote_code: bool = False,
) -> dict:
    """`finetune eval`: generate, score, write results + predictions, refresh the card. Returns the entry."""
    console = console or Console(highlight=False, soft_wrap=True)
    path, data = Path(path), Path(data)
    if metric not in scoring.METRICS:
        raise UserError(f"--metric: must be one of {', '.join(scoring.METRICS)} (got {metric!r})")
    for name, value in (
        ("--limit", limit),
        ("--batch-size", batch_size),
        ("--max-new-tokens", max_new_tokens),
    ):
        if value is not None and value <= 0:
            raise UserError(f"{name}: must be > 0 (got {value})")
    if tolerance < 0:
        raise UserError(f"--tolerance: must be >= 0 (got {tolerance})")
    rows = read_rows(data, limit)
    loaded = generate.load(
        path, base_only=base_only, say=console.print, dataset_index=dataset_index,
        trust_remote_code=trust_remote_code,
    )  # fmt: skip
    items = examples(loaded, rows, data, field_input, field_target)
    targets = [e.target for e in items]
    new_tokens = max_new_tokens or answer_format.auto_max_new_tokens(loaded.tokenizer, targets)
    stop = answer_format.stop_ids(loaded.cfg, loaded.dataset, loaded.tokenizer, loaded.model)
    console.print(
        f"eval: {len(items)} rows of {data} on the {loaded.what} model, batches of {batch_size}, up to {new_tokens} new tokens"
    )

    started = time.perf_counter()
    with _progress(console, len(items)) as advance:
        answers = generation.generate_batch(
            loaded.model, loaded.tokenizer, [e.prompt for e in items], new_tokens, batch_size, stop, advance
        )
    seconds = time.perf_counter() - started
    scored = scoring.score(answers, targets, metric, tolerance)

    out_dir = Path(out) if out else path
    who = "base" if base_only else "finetuned"
    predictions = out_dir / f"predictions_{data.stem}{'_base' if base_only else ''}.jsonl"
    records = [
        {"line": e.line, "input": e.input, "target": e.target, "prediction": a, "parsed": p, "correct": c}
        for e, a, p, c in zip(items, answers, scored.extracted, scored.correct, strict=True)
    ]
    atomic_write_text(predictions, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    entry = {
        "task": scored.kind,
        **scored.summary,
        "examples": len(items),
        "data": str(data),
        "model": loaded.what,
        "max_new_tokens": new_tokens,
        "batch_size": batch_size,
        "seconds": round(seconds, 3),
        "examples_per_second": round(len(items) / seconds, 3) if seconds else None,
        "predictions": predictions.name,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    saved = eval_results.save_results(out_dir, data.stem, who, entry)
    console.print(eval_results.results_table(data.stem, saved[eval_results.RESULTS_KEY][data.stem]))
    console.print(f"wrote {out_dir / eval_results.RESULTS_FILE} and {predictions}")
    run_folder = loaded.run.cfg.adapter is None or (
        loaded.what != "merged" and loaded.run.adapter_dir is not None
    )
    if out_dir.resolve() == path.resolve() and run_folder:  # a training run's folder (a full fine-tune's too)
        console.print(f"wrote {card.write_card(path)} (results in the model-index)")
    elif out_dir.resolve() != path.resolve():
        console.print(f"note: the card in {path} is unchanged (results went to --out {out_dir})")
    else:
        console.print(
            "note: a merged folder's card is written by `finetune merge` from the run's folder; unchanged"
        )
    return entry


def _progress(console, total: int):
    @contextmanager
    def bar():
        if not console.is_terminal:
            yield None
            return
        with Progress(TextColumn("[bold]eval"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=True) as progress:  # fmt: skip
            task = progress.add_task("eval", total=total)
            yield lambda n: progress.advance(task, n)

    return bar()
