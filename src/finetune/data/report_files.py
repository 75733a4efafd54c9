"""The data report on disk and on screen: `data_report.{json,md,png}` next to the prepared data, the
`finetune data` command, and the three lines (and overlap warnings) `train` prints.

The files sit in the cache folder (dataset_prepared_path/<fingerprint>/): the report describes exactly those
tokens, and a changed config or data gets a new folder and so a new report.
"""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout
from pathlib import Path

from rich.markup import escape

from finetune import hub, methods
from finetune.config import Config
from finetune.data import analysis, prepare, report, report_pairs
from finetune.data.tokenizer import load_tokenizer
from finetune.errors import UserError
from finetune.files import atomic_write_bytes, atomic_write_json, atomic_write_text

NAME = "data_report"


def data_command(cfg: Config, against: list[str], as_json: bool) -> dict:
    """`finetune data CONFIG [--against FILE ...] [--json]`: prepare (or reuse) the data, report, write."""
    for path in against:  # before anything is tokenized
        if not Path(path).is_file():
            raise UserError(f"--against {path}: no such file")
    offline = hub.offline_if_unreachable(cfg.hub_ids)
    if offline and not as_json:
        report.note(offline)
    tokenizer = load_tokenizer(cfg)
    if as_json:
        with redirect_stdout(io.StringIO()):  # --json: stdout carries the JSON object alone
            prepared = prepare(cfg, tokenizer)
    else:
        prepared = prepare(cfg, tokenizer)
    if not methods.of(cfg).answers:  # pairs, KTO rows, GRPO prompts: report_pairs.py says what differs
        folder = prepared.path or report_pairs.grpo_folder(cfg, tokenizer)
        folder.mkdir(parents=True, exist_ok=True)
        found = report_pairs.analyse(cfg, tokenizer, prepared, folder, against)
    else:
        found = analysis.analyse(cfg, tokenizer, prepared.path, against).report
        folder = prepared.path
    write(folder, found)
    if as_json:
        print(json.dumps(found, indent=2))
    else:
        console = report.new_console()
        console.print(markdown(found), markup=False)
        for line in warnings(found):
            console.print(f"[yellow]warning:[/] {escape(line)}")
    return found


def for_training(cfg: Config, tokenizer, folder: Path) -> dict | None:
    """The report of the data a run trains on: the one in the cache folder (written by `finetune data`, maybe
    with --against files), else computed now and written there. None for preference and GRPO data."""
    if not methods.of(cfg).answers or folder is None:
        return None
    saved = Path(folder) / f"{NAME}.json"
    if saved.is_file():
        return json.loads(saved.read_text())
    found = analysis.analyse(cfg, tokenizer, Path(folder))
    write(Path(folder), found.report)
    return found.report


def show_for_training(found: dict | None, console) -> None:
    """What `train` prints of the report: its three lines, then a warning per overlapping row set."""
    for line in summary_lines(found) if found else ():
        console.print(f"data report: {escape(line)}")
    for line in warnings(found) if found else ():
        console.print(f"[yellow]warning:[/] {escape(line)}")


def write(folder: Path, found: dict) -> None:
    """data_report.json, .md and .png in `folder`, each written atomically."""
    atomic_write_json(Path(folder) / f"{NAME}.json", found)
    atomic_write_text(Path(folder) / f"{NAME}.md", markdown(found))
    atomic_write_bytes(Path(folder) / f"{NAME}.png", histogram_png(found))


# ---------------------------------------------------------------- what people read


def summary_lines(found: dict) -> list[str]:
    """Three lines: rows and sources; lengths, cuts and repeats; the eval split's overlap and where the report is."""
    train, sources = found["train"], found["sources"]
    shares = ", ".join(
        f"{s['key']} {s['share_of_trained_tokens']:.0%}" for s in sources if "share_of_trained_tokens" in s
    )
    eval_rows = found["eval"]["rows"] if found.get("eval") else 0
    first = f"{report.count(train['rows'], 'train rows')} ({shares} of trained tokens), {report.count(eval_rows, 'eval rows')}"
    lengths, seq = train["lengths"] or {}, found["sequence_len"]
    over = sum(s.get("over_sequence_len", 0) for s in sources)
    exact, near = found["exact_duplicates"]["rows"], found["near_duplicates"]["rows"]
    second = (
        f"lengths p50 {lengths.get('p50', 0):.0f}, p99 {lengths.get('p99', 0):.0f}, max {lengths.get('max', 0)} "
        f"(sequence_len {seq}; {report.count(over, 'rows')} longer, dropped or cut); "
        f"{report.count(exact, 'exact duplicates')}, {report.count(near, 'near-duplicates')}"
    )
    eval_overlap = found["overlap"]["eval"]
    third = (
        f"eval rows in training: {eval_overlap['exact_rows']} exact, {eval_overlap['ngram_share']:.1%} share a "
        f"13-gram; "
        if eval_overlap
        else ""
    ) + f"report: {Path(found['prepared']) / (NAME + '.md')}"
    return [first, second, third]


def warnings(found: dict) -> list[str]:
    """A line for the eval split and each --against file that overlaps the training rows (not a refusal)."""
    out = []
    checks = [("the eval split", found["overlap"]["eval"])] + [
        (f"--against {a['file']}", a) for a in found["overlap"]["against"]
    ]
    for what, o in checks:
        if o and (o["exact_rows"] or o["ngram_rows"]):
            out.append(
                f"{what}: {o['exact_rows']} of {o['rows']} rows are training rows, {o['ngram_rows']} "
                f"({o['ngram_share']:.1%}) share a 13-gram with them: scores on it overstate the model"
            )
    return out


def markdown(found: dict) -> str:
    """The report as Markdown tables (data_report.md; also what `finetune data` prints)."""
    if "kind" in found:  # preference pairs, KTO rows, GRPO prompts
        return report_pairs.markdown(found)
    lines = [
        "# Data report",
        "",
        f"Prepared data: `{found['prepared']}`; sequence_len {found['sequence_len']}.",
        "",
    ]
    lines += [f"- {line}" for line in summary_lines(found)] + [""]
    lines += ["## Sources", "", "| source | weight | read | weighted | kept | train | eval | trained tokens | masked tokens | share | p50 / p99 / max | over sequence_len | removed |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for s in found["sources"]:
        ln = s.get("lengths") or {}
        removed = ", ".join(f"{k} {v}" for k, v in s["removed"].items()) or "none"
        share = f"{s['share_of_trained_tokens']:.1%}" if "share_of_trained_tokens" in s else ""
        before = s.get("trained_tokens_before")
        trained = f"{s.get('trained_tokens', 0):,}" + (
            f" (before weight: {before:,})" if s["weight"] != 1 and before is not None else ""
        )
        lines.append(
            f"| {s['key']} `{s['path']}` | {s['weight']:g} | {s['rows_read']:,} | {s['rows_weighted']:,} | {s['rows_kept']:,} "
            f"| {s['rows_in_train']:,} | {s['rows_in_eval']:,} | {trained} | {s['masked_tokens']:,} | {share} "
            f"| {ln.get('p50', 0):.0f} / {ln.get('p99', 0):.0f} / {ln.get('max', 0)} | {s['over_sequence_len']:,} | {removed} |"
        )
    for s in found["sources"]:
        if s.get("labels"):
            labels = ", ".join(f"{k!r}: {v}" for k, v in list(s["labels"].items())[:20])
            lines += ["", f"Labels of {s['key']}: {labels}"]
    e, n = found["exact_duplicates"], found["near_duplicates"]
    lines += ["", "## Repeats in the training rows", "",
              f"- exact (after whitespace/case normalisation): {e['rows']} rows ({e['within_source']} within a source, {e['across_sources']} across)",
              f"- near (MinHash, Jaccard >= {n['threshold']} of word 3-grams): {n['rows']} rows ({n['within_source']} within, {n['across_sources']} across)",
              "", "## Overlap with the training rows", "", "| rows of | rows | exact | share a 13-gram | under 13 words |", "|---|---|---|---|---|"]  # fmt: skip
    lines += analysis.overlap_table_rows(found)
    return "\n".join(lines) + "\n"


def histogram_png(found: dict) -> bytes:
    """Token lengths of the training rows per source, with sequence_len marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hist = found["histogram"]
    edges = hist["edges"]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    try:
        for i, counts in hist["counts"].items():
            if i == "all":  # preference, KTO, GRPO: one series (their caches have no per-row source)
                ax.stairs(counts, edges, label=f"all sources ({found['kind']})")
                continue
            key = found["sources"][int(i)]["key"]
            ax.stairs(counts, edges, label=f"{key} {Path(found['sources'][int(i)]['path']).name}")
        limit = found.get("length_limit", found["sequence_len"])
        seq = found["sequence_len"]
        name = (
            f"sequence_len {seq}"
            if limit == seq
            else f"prompt limit {limit} (sequence_len - max_completion_length)"
        )
        ax.axvline(limit, color="black", linestyle="--", label=name)
        ax.set_xlabel("tokens in a training row")
        ax.set_ylabel("rows")
        ax.set_title("Training row lengths by source")
        ax.legend(fontsize="small")
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    finally:
        plt.close(fig)
    return buffer.getvalue()
