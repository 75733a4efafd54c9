"""The prepared training set's lengths — rows, tokens, the longest row and every row's length (token-budget batches
are cut from them: data.batch_cuts) — which is all `finetune plan` and train's fit check need to size the largest
micro-batch this data makes (the plan stage never sees a row).

The numbers come from the fingerprinted cache `prepare` writes (built first when absent, exactly as `finetune
preprocess` and `finetune train` build it), read as Arrow list lengths: no Python loop over rows.
"""

from __future__ import annotations

from finetune.config import Config


def length_stats(cfg: Config, tokenizer=None, table=None) -> dict | None:
    """{"rows", "tokens", "longest", "lengths" (every row's, numpy)} of the training set: of `table` (a tokenized datasets table already in
    hand), else of this config's prepared data (the cache, prepared first when absent; `tokenizer` loaded from
    the config when not given). None for data of another layout: preference pairs and GRPO prompts."""
    if table is None:
        if cfg.preference or cfg.online_rl:
            return None
        # a cycle, still: `prepare` lives in data/__init__, which imports this module (issue 28 moves it out)
        from finetune.data import prepare
        from finetune.data.tokenizer import load_tokenizer

        table = prepare(cfg, tokenizer if tokenizer is not None else load_tokenizer(cfg)).train
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
