"""What the data stage tells the user: progress bars, what was removed and why, examples, lengths.

`examples` is how people debug masking: each row is decoded in runs, masked tokens dim, trained tokens
green and between ⟦ ⟧ (the brackets survive when the output is piped to a file).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from finetune.data.rows import IGNORE


def new_console() -> Console:
    return Console(highlight=False, soft_wrap=True)


def note(text: str) -> None:
    new_console().print(f"[yellow]note:[/] {escape(text)}")


def progress():
    """Rich progress bars (on stderr) for tokenization: rows done, time spent and left."""

    class Bars(Progress):
        def stop(self) -> None:
            if self.tasks:
                return super().stop()
            self.live.transient = True  # failed before the first bar: leave no empty line in a log
            self.live.stop()

    return Bars(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("rows"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )


def count(n: int, noun: str) -> str:
    """`1 row`, `2 rows`, `1,024 completion texts`: a count with its noun (given in the plural) agreeing."""
    return f"{n:,} {noun if n != 1 else noun.removesuffix('s')}"


def removals(stats: dict) -> str:
    """One line: every reason rows were removed or changed, with counts (or that none were)."""
    seq, strategy = stats.get("sequence_len"), stats.get("excess_length_strategy", "drop")
    parts = []
    if stats.get("dropped_too_long"):
        why = "longer than" if strategy == "drop" else "with no answer left after truncation to"
        limit = f"sequence_len {seq}" if seq else "sequence_len"
        parts.append(
            f"dropped {count(stats['dropped_too_long'], 'rows')} {why} {limit} (excess_length_strategy: {strategy})"
        )
    if stats.get("dropped_too_short"):
        least = stats.get("min_sample_len")
        parts.append(
            f"dropped {count(stats['dropped_too_short'], 'rows')} shorter than min_sample_len"
            + (f" {least}" if least else "")
        )
    if stats.get("split_texts"):
        parts.append(
            f"split {count(stats['split_texts'], 'completion texts')} longer than sequence_len {seq} into "
            f"{count(stats['chunks'], 'chunks')}"
        )
    if stats.get("truncated"):
        parts.append(
            f"truncated {count(stats['truncated'], 'rows')} to sequence_len {seq} (excess_length_strategy: truncate)"
        )
    if stats.get("empty_answer"):
        parts.append(
            f"skipped {count(stats['empty_answer'], 'rows')} with an empty answer (nothing to train)"
        )
    if stats.get("duplicates"):
        parts.append(
            f"removed {count(stats['duplicates'], 'exact duplicates')} (dataset_exact_deduplication)"
        )
    return "; ".join(parts) or "no rows dropped, truncated or skipped"


def summary(
    stats: dict, folder: Path, reused: bool, unit: str = "rows", trained: str = "trained", describe=None
) -> None:
    """Print what was prepared, where, and what was removed (`describe(stats)` says what; default `removals`).

    Preference data calls it with unit="pairs", trained="in answers" and its own removal wording.
    """
    describe = describe or removals
    console = new_console()
    how = "reused the cache" if reused else "saved"
    eval_part = f", {count(stats['eval_rows'], f'eval {unit}')}" if stats.get("eval_rows") else ""
    console.print(
        f"data: {count(stats['rows_in'], 'rows')} in, {count(stats['train_rows'], f'train {unit}')}{eval_part}, "
        f"{count(stats['tokens'], 'train tokens')} ({stats['trained_tokens']:,} {trained}) — {how} at {folder}"
    )
    console.print(f"data: {describe(stats)}")
    for line in source_lines(stats):
        console.print(f"data: {escape(line)}")
    if "test_datasets" in stats:
        test = {**stats, **stats["test_datasets"]}
        console.print(f"data: test_datasets: {count(test['rows_in'], 'rows')} in; {describe(test)}")


def source_lines(stats: dict, always: bool = False) -> list[str]:
    """Per dataset entry: rows and trained tokens before -> after `weight`, and its share of the trained
    tokens (of the prepared rows, before the eval split). Only when weights or several entries make it
    worth a line each, unless `always`."""
    entries = stats.get("sources") or []
    if not always and len(entries) < 2 and all(e["weight"] == 1 for e in entries):
        return []
    total = sum(e.get("trained_tokens") or 0 for e in entries)
    lines = []
    for e in entries:
        rows = f"{e['rows_read']:,} rows read"
        if e["weight"] != 1:
            rows += f" -> {e['rows_weighted']:,} weighted"
        line = f"{e['key']} {e['path']} (weight {e['weight']:g}): {rows}, {e['rows_kept']:,} kept"
        if "trained_tokens" in e:
            before = e.get("trained_tokens_before")
            if before is None:  # weight < 1: the rows left out were never tokenized
                before_text = f"≈{e['trained_tokens'] / e['weight']:,.0f}"
            else:
                before_text = f"{before:,}"
            tokens = f"{e['trained_tokens']:,} trained tokens"
            if e["weight"] != 1:
                tokens = f"trained tokens {before_text} -> {e['trained_tokens']:,}"
            share = e["trained_tokens"] / total if total else 0
            line += f"; {tokens} ({share:.0%} of all trained)"
        lines.append(line)
    return lines


def examples(dataset, tokenizer, n: int) -> None:
    """Print n rows decoded in runs: masked parts dim, trained parts green inside ⟦ ⟧."""
    console = new_console()
    console.print(
        "[bold]examples[/bold] (masked text is dim; [green]⟦trained text⟧[/green] is what the loss sees)"
    )
    for i in range(min(n, len(dataset))):
        row = dataset[i]
        ids, labels = row["input_ids"], row["labels"]
        trained = sum(1 for t in labels if t != IGNORE)
        console.rule(f"row {i}: {len(ids)} tokens, {trained} trained")
        console.print(_marked(ids, labels, tokenizer))


def _marked(ids: list[int], labels: list[int], tokenizer) -> str:
    return "".join(
        f"[green]⟦{escape(text)}⟧[/green]" if trained else f"[dim]{escape(text)}[/dim]"
        for text, trained in segments(ids, labels, tokenizer)
    )


def segments(ids: list[int], labels: list[int], tokenizer) -> list[tuple[str, bool]]:
    """A row decoded in runs of masked and trained tokens: [(text, trained), ...] (also the Studio's preview)."""
    out, start = [], 0
    for j in range(1, len(ids) + 1):
        if j == len(ids) or (labels[j] != IGNORE) != (labels[start] != IGNORE):
            out.append((tokenizer.decode(ids[start:j], skip_special_tokens=False), labels[start] != IGNORE))
            start = j
    return out


def length_distribution(train, eval_, sequence_len: int) -> None:
    """Token lengths: count, min/mean/percentiles/max, and a histogram up to sequence_len."""
    import numpy as np

    console = new_console()
    for name, dataset in (("train", train), ("eval", eval_)):
        if dataset is None or len(dataset) == 0:
            continue
        lengths = np.array([len(x) for x in dataset["input_ids"]])
        p50, p90, p99 = np.percentile(lengths, [50, 90, 99])
        console.print(
            f"[bold]{name} lengths[/bold] ({len(lengths):,} rows): min {lengths.min()}, mean {lengths.mean():.0f}, "
            f"p50 {p50:.0f}, p90 {p90:.0f}, p99 {p99:.0f}, max {lengths.max()} (sequence_len {sequence_len})"
        )
        edges = np.linspace(0, max(sequence_len, int(lengths.max())), 11).astype(int)
        counts, _ = np.histogram(lengths, bins=edges)
        for lo, hi, count in zip(edges[:-1], edges[1:], counts, strict=True):
            bar = "█" * int(round(40 * count / max(counts.max(), 1)))
            console.print(f"  {lo:>7}–{hi:<7} {count:>8,} {bar}")


@contextmanager
def no_datasets_bars():
    """datasets' tqdm bars off while we load and save (ours are rich bars), restored after."""
    import datasets

    were_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if were_on:
            datasets.enable_progress_bars()
