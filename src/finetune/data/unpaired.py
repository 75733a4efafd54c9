"""rl: kto's data: (prompt_ids, completion_ids, label) tables, from unpaired rows and from pairs.

preference.py loads, caches and splits the data as for every preference run and calls in here for rl: kto:
a source of unpaired rows (unpaired_format.py says which) is tokenized and fitted row by row; a source of
pairs is fitted as pairs (answer_rows.py's rules) and each kept pair becomes two rows, its chosen answer
desirable and its rejected one undesirable. So one run can mix pair files and unpaired files: both end as
unpaired rows. Length rules for an unpaired row, as for pairs: max_prompt_len keeps the prompt's end (and its
BOS); a row whose prompt + answer exceeds sequence_len is dropped, or with excess_length_strategy: truncate,
its answer is cut to fit (dropped when the prompt alone fills it). Empty answers are skipped, every removal
counted. KTO needs both kinds of rows: a training set without desirable or without undesirable rows is
refused here, before anything is cached.
"""

from __future__ import annotations

from finetune import methods
from finetune.config import Config
from finetune.data import encode, report, unpaired_format
from finetune.errors import UserError

COLUMNS = ("prompt_ids", "completion_ids", "label")


def refusal(cfg: Config, where: str, label: str) -> str:
    """The one line for unpaired rows given to a method that trains on pairs."""
    method = methods.of(cfg).selector
    return (
        f"{where}: {label} holds unpaired rows (prompt, completion, label): {method} needs chosen/rejected "
        "pairs; rl: kto reads unpaired rows"
    )


def encode_batch(spec, tokenizer, batch: dict) -> dict:
    rows = [{k: v[j] for k, v in batch.items()} for j in range(encode.rows_in(batch))]
    return unpaired_format.encode_rows(spec, tokenizer, rows)


def from_pairs(pairs, totals: dict):
    """Each pair as two rows: (prompt, chosen) desirable, then (prompt, rejected) undesirable."""
    prompts, chosen, rejected = (pairs[c].to_pylist() for c in ("prompt_ids", "chosen_ids", "rejected_ids"))
    rows = {c: [] for c in COLUMNS}
    for p, c, r in zip(prompts, chosen, rejected, strict=True):
        for answer, label in ((c, True), (r, False)):
            rows["prompt_ids"].append(p)
            rows["completion_ids"].append(answer)
            rows["label"].append(label)
    totals["pairs_split"] += len(prompts)
    totals["rows_kept"] += len(prompts)  # the pair rules counted each kept pair once; it is two rows
    return table(rows)


def table(rows: dict | None = None):
    import pyarrow as pa

    rows = rows or {c: [] for c in COLUMNS}
    ids = pa.list_(pa.int32())
    return pa.table({
        "prompt_ids": pa.array(rows["prompt_ids"], ids),
        "completion_ids": pa.array(rows["completion_ids"], ids),
        "label": pa.array(rows["label"], pa.bool_()),
    })  # fmt: skip


def label_counts(rows) -> tuple[int, int]:
    """(desirable, undesirable) rows of a table."""
    if rows is None:
        return 0, 0
    desirable = sum(bool(v) for v in rows["label"].to_pylist())
    return desirable, rows.num_rows - desirable


def check_classes(stats: dict) -> None:
    """KTO's loss weighs desirable against undesirable rows: a training set with one kind only is refused."""
    desirable, undesirable = stats["desirable"], stats["undesirable"]
    if desirable and undesirable:
        return
    kind, missing = (
        ("desirable", "undesirable (label false)") if desirable else ("undesirable", "desirable (label true)")
    )
    raise UserError(
        f"datasets: rl: kto needs desirable and undesirable rows, but all {report.count(desirable + undesirable, 'training rows')} are "
        f"{kind}: add {missing} rows, or train on pairs (each pair gives one of each)"
    )  # fmt: skip


# ---------------------------------------------------------------- what the user is told


def describe(stats: dict) -> str:
    """One line: how many rows of each kind, and where pairs were split."""
    parts = [f"{stats['desirable']:,} desirable and {stats['undesirable']:,} undesirable train rows"]
    if stats.get("pairs_split"):
        parts.append(f"{report.count(stats['pairs_split'], 'pairs')} split into one of each")
    return "kto: " + "; ".join(parts)


def examples(dataset, tokenizer, n: int) -> None:
    """`preprocess --inspect N`: each row decoded, the prompt dim, the answer green (desirable) or red."""
    from rich.markup import escape

    console = report.new_console()
    console.print("[bold]examples[/bold] (prompt dim; [green]⟦desirable answer⟧[/green]; [red]⟦undesirable answer⟧[/red])")  # fmt: skip
    for i in range(min(n, len(dataset))):
        row = dataset[i]
        p, c, label = (row[k] for k in COLUMNS)
        console.rule(
            f"row {i}: prompt {len(p)} tokens, answer {len(c)}, {'desirable' if label else 'undesirable'}"
        )
        console.print(f"[dim]{escape(tokenizer.decode(p, skip_special_tokens=False))}[/dim]")
        colour = "green" if label else "red"
        console.print(f"[{colour}]⟦{escape(tokenizer.decode(c, skip_special_tokens=False))}⟧[/{colour}]")
