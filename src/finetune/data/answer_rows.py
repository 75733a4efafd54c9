"""Rows of a prompt and its answers — DPO's pairs (prompt, chosen, rejected) and KTO's unpaired rows (prompt,
completion, label) — fitted, deduplicated and counted by one path (preference.py and unpaired.py give only
their layout).

Length rules, in this order: max_prompt_len keeps a prompt's last tokens (its BOS stays first: the end of a
prompt is what the answers follow); a row whose prompt + longest answer exceeds sequence_len is dropped, or with
excess_length_strategy: truncate, its answers are cut to fit (dropped when the prompt alone fills it, or when the
cut answers no longer differ). Rows with an empty answer, or two identical answers, teach nothing and are
skipped; every removal is counted.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from finetune.data import encode
from finetune.data.preference_format import EMPTY, ERROR, SAME, keep_end
from finetune.errors import UserError


@dataclass(frozen=True)
class Layout:
    """The columns of one kind of row: prompt_ids, the answers (token lists), then the rest (KTO's label)."""

    answers: tuple[str, ...]
    extra: tuple[str, ...] = ()
    counter: str | None = None  # the totals key each kept row also counts (KTO: unpaired_rows)

    @property
    def columns(self) -> tuple[str, ...]:
        return ("prompt_ids", *self.answers, *self.extra)


PAIRS = Layout(answers=("chosen_ids", "rejected_ids"))
UNPAIRED = Layout(answers=("completion_ids",), extra=("label",), counter="unpaired_rows")


def fit(layout: Layout, out: dict, src, start: int, cfg, bos: int | None, totals: dict) -> dict[str, list]:
    """Report the first bad row; apply max_prompt_len and sequence_len; count into `totals`; the kept rows'
    columns."""
    bad = [i for i, s in enumerate(out["status"]) if s == ERROR]
    if bad:
        raise UserError(f"{src.where(start + bad[0])}: {out['error'][bad[0]]}")
    kept: dict[str, list] = {c: [] for c in layout.columns}
    for i, status in enumerate(out["status"]):
        totals["rows_in"] += 1
        if status == EMPTY:
            totals["empty_answer"] += 1
            continue
        if status == SAME:
            totals["same_answers"] += 1
            continue
        prompt, answers = out["prompt_ids"][i], [out[a][i] for a in layout.answers]
        if cfg.max_prompt_len and len(prompt) > cfg.max_prompt_len:
            prompt = keep_end(prompt, cfg.max_prompt_len, bos)
            totals["prompt_truncated"] += 1
        room = cfg.sequence_len - len(prompt)
        if max(len(a) for a in answers) > room:
            cut = [a[:room] for a in answers] if room > 0 else []
            if cfg.excess_length_strategy != "truncate" or room <= 0 or _same(cut):
                totals["dropped_too_long"] += 1
                continue
            answers = cut
            totals["truncated"] += 1
        for name, value in zip(
            layout.columns, (prompt, *answers, *(out[e][i] for e in layout.extra)), strict=True
        ):
            kept[name].append(value)
        totals["rows_kept"] += 1
        if layout.counter:
            totals[layout.counter] += 1
    return kept


def _same(answers: list[list[int]]) -> bool:
    """Two answers cut to the same tokens: the pair no longer teaches a preference."""
    return len(answers) > 1 and all(a == answers[0] for a in answers[1:])


def deduplicate(layout: Layout, table, against=None):
    """Drop exact repeats of a whole row, keeping the first; with `against`, rows found there."""
    return encode.deduplicate(table, against, row_hashes=lambda t: _row_hashes(layout, t))


def _row_hashes(layout: Layout, table):
    for row in zip(*(table[c].to_pylist() for c in layout.columns), strict=True):
        h = hashlib.blake2b(digest_size=16)
        for value in row:
            h.update(np.asarray(value, dtype=np.int32).tobytes() + b"|")  # a label hashes as 1 or 0
        yield h.digest()


def token_counts(layout: Layout, table) -> tuple[int, int]:
    """(tokens the model reads: the prompt once per answer, plus the answers; answer tokens) of a table."""
    import pyarrow.compute as pc

    if table is None or table.num_rows == 0:
        return 0, 0
    length = {
        c: int(pc.sum(pc.list_value_length(table[c])).as_py() or 0) for c in ("prompt_ids", *layout.answers)
    }
    answers = sum(length[a] for a in layout.answers)
    return len(layout.answers) * length["prompt_ids"] + answers, answers
