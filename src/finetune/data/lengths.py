"""The prepared training set's lengths — rows, tokens, the longest row and every row's length (token-budget batches
are cut from them: data.batch_cuts) — which is all `finetune plan` and train's fit check need to size the largest
micro-batch this data makes (the plan stage never sees a row; it asks `data.length_stats`).

The numbers are read from a tokenized table as Arrow list lengths: no Python loop over rows.
"""

from __future__ import annotations


def table_lengths(table) -> dict | None:
    """{"rows", "tokens", "longest", "lengths" (every row's, numpy)} of a tokenized table (None: no table, no
    input_ids, no rows)."""
    if table is None or "input_ids" not in getattr(table, "column_names", ()) or not len(table):
        return None
    import pyarrow.compute as pc

    column = table.select_columns(["input_ids"]).with_format("arrow")[:]["input_ids"]  # a selection honoured
    lengths = pc.list_value_length(column)
    return {
        "rows": len(table),
        "tokens": int(pc.sum(lengths).as_py()),
        "longest": int(pc.max(lengths).as_py()),
        "lengths": lengths.to_numpy(zero_copy_only=False),  # token-budget batches are cut from them
    }
