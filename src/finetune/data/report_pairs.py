"""The data report for preference (rl: dpo, orpo, simpo, reward_model), rl: kto and rl: grpo data.

What it reports, from the cache (GRPO: from the prompts it builds; nothing is cached for it) and the
tokenizer alone: per source, rows read, weighted and kept, its weight, and (pairs, KTO) its tokens and answer
tokens and their share; over all rows, every removal reason the data stage counted; the lengths of
prompt + chosen and prompt + rejected (KTO: prompt + completion; GRPO: the prompt against sequence_len -
max_completion_length) against sequence_len; exact duplicates (normalised text of the whole row) and repeated
prompts; and the overlap of the eval split and of each `--against` file with the training prompts (exact, and
13-gram, as contamination.py counts it for SFT).

Not reported for these methods (the SFT report has them): per-source lengths, histogram and train/eval
split (preference caches carry no per-row source), near-duplicates (several pairs per prompt are normal,
so near-duplicate prompts are not a defect), and answer labels (KTO: desirable/undesirable counts instead).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from finetune import methods
from finetune.config import Config
from finetune.data import (
    analysis,
    contamination,
    encode_prompt,
    fingerprint_inputs,
    formats,
    no_datasets_bars,
    prompts,
    row_text,
    sources,
)
from finetune.errors import UserError

PAIRS, KTO, GRPO = "preference pairs", "kto rows", "grpo prompts"
_P = np.uint64(0x9E3779B97F4A7C15)


def kind(cfg: Config) -> str:
    """Which layout the method's rows have (the method table's `rows`)."""
    return {"prompts": GRPO, "unpaired": KTO}.get(methods.of(cfg).rows, PAIRS)


def analyse(cfg: Config, tokenizer, prepared, folder: Path, against: list[str] | tuple = ()) -> dict:
    """Every figure this report has for `prepared` (data.prepare's result), as one JSON-ready dict."""
    what = kind(cfg)
    train = _rows(what, prepared.train, tokenizer)
    eval_ = _rows(what, prepared.eval, tokenizer) if prepared.eval is not None else None
    others = [_against(cfg, tokenizer, what, path) for path in against]
    stats = prepared.stats
    exact_of = contamination.exact_groups(train["row_ids"])
    prompt_of = contamination.exact_groups(train["prompts"].text_ids)
    grams = contamination.ngrams(train["prompts"], contamination.NGRAM)
    limit = stats["sequence_len"] - stats.get("max_completion_length", 0)
    found = {
        "kind": what,
        "prepared": str(folder),
        "sequence_len": stats["sequence_len"],
        "excess_length_strategy": cfg.excess_length_strategy,
        "length_limit": limit,
        "train": _totals(train, limit),
        "eval": _totals(eval_, limit) if eval_ is not None else None,
        "eval_from": "test_datasets" if cfg.test_datasets else ("val_set_size" if cfg.val_set_size else None),
        "removed": {k: v for k, v in stats.items() if isinstance(v, int) and v and k in _REMOVALS},
        **({"desirable": stats["desirable"], "undesirable": stats["undesirable"]} if what == KTO else {}),
        "sources": _sources(stats.get("sources") or [], what),
        "exact_duplicates": {"rows": int((exact_of != np.arange(len(exact_of))).sum())},
        "repeated_prompts": {"rows": int((prompt_of != np.arange(len(prompt_of))).sum())},
        "overlap": {
            "on": "prompt text",
            "eval": _overlap(train, eval_, grams) if eval_ is not None and len(eval_["length"]) else None,
            "against": [{"file": str(p), **_overlap(train, o, grams)} for p, o in zip(against, others, strict=True)],
        },
        "not_reported": [
            "per-source lengths, histograms and train/eval rows (one histogram of all rows instead: the rows carry no source)",
            "near-duplicates (several pairs per prompt are normal)",
            "answer labels",
        ],
    }  # fmt: skip
    found["histogram"] = histogram(found, train["length"])
    return found


def grpo_folder(cfg: Config, tokenizer) -> Path:
    """Where GRPO's report goes (nothing is cached for GRPO): named by what its prompts depend on, apart
    from any SFT cache of the same datasets."""
    inputs = {
        **fingerprint_inputs(cfg, tokenizer),
        "grpo_max_completion_length": prompts.completion_length(cfg),
    }
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return Path(cfg.prepared_path) / f"grpo-{digest}"


_REMOVALS = ("dropped_too_long", "truncated", "empty_answer", "same_answers", "prompt_truncated", "duplicates",
             "empty_prompt", "pairs_split")  # fmt: skip


# ---------------------------------------------------------------- rows as words and lengths


def _rows(what: str, dataset, tokenizer) -> dict:
    """Prompt words, a whole-row text id, and the row's length as the limit applies to it."""
    if what == GRPO:
        prompts = list(dataset["prompt"])
        words = row_text.to_words([_without_bos(tokenizer, p) for p in prompts])
        reference = row_text.to_words(list(dataset["reference"])).text_ids
        length = np.array([len(ids) for ids in tokenizer(prompts)["input_ids"]] if prompts else [], np.int64)
        return {"prompts": words, "row_ids": _combine(words.text_ids, reference), "length": length}
    table = dataset.data.table
    columns = ("chosen_ids", "rejected_ids") if what == PAIRS else ("completion_ids",)
    prompt_ids = table["prompt_ids"].combine_chunks()
    words = _words(tokenizer, prompt_ids)
    row_ids, length = words.text_ids, np.diff(prompt_ids.offsets.to_numpy()).astype(np.int64)
    answers = []
    for name in columns:
        ids = table[name].combine_chunks()
        row_ids = _combine(row_ids, _words(tokenizer, ids).text_ids)
        answers.append(np.diff(ids.offsets.to_numpy()).astype(np.int64))
    if what == KTO:
        row_ids = _combine(row_ids, table["label"].to_numpy(zero_copy_only=False).astype(np.uint64))
    return {
        "prompts": words,
        "row_ids": row_ids,
        "length": length + np.max(answers, axis=0),
        "answers": answers,
    }


def _without_bos(tokenizer, text: str) -> str:
    """GRPO's prompts lose a chat template's BOS text (TRL adds it); compared without it on both sides."""
    bos = tokenizer.bos_token
    return text[len(bos) :] if bos and text.startswith(bos) else text


def _words(tokenizer, ids) -> row_text.Words:
    return row_text.words(
        *row_text.normalise(*row_text.decode(tokenizer, ids.values.to_numpy(), ids.offsets.to_numpy()))
    )


def _combine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return row_text.mix(a * _P + b)


def _against(cfg: Config, tokenizer, what: str, path) -> dict:
    """An --against file's rows as prompts laid out as datasets[0]'s are (so its template is the same)."""
    import datasets

    if not Path(path).is_file():
        raise UserError(f"--against {path}: no such file")
    ds = cfg.datasets[0].model_copy(
        update={"path": str(path), "data_files": None, "ds_type": None, "weight": 1.0}
    )
    with no_datasets_bars():
        [src] = sources.load_sources(ds, f"--against {path}")
    texts, ids = [], []
    spec = formats.build_format(cfg, ds, f"--against {path}", tokenizer).spec if what == GRPO else None
    for n, row in enumerate(src.dataset):
        try:
            if what == GRPO:
                texts.append(prompts.prompt_and_reference(spec, row, tokenizer)[0])
            else:
                ids.append(encode_prompt(cfg, ds, row, tokenizer))
        except (UserError, formats.RowError) as exc:
            raise UserError(f"--against {src.where(n)}: {exc} (read as datasets[0] is)") from None
    if what == GRPO:
        return {"prompts": row_text.to_words([_without_bos(tokenizer, t) for t in texts])}
    table = datasets.Dataset.from_dict({"ids": ids}).data.table
    return {"prompts": _words(tokenizer, table["ids"].combine_chunks())}


# ---------------------------------------------------------------- figures


def _totals(rows: dict, limit: int) -> dict:
    length = rows["length"]
    out = {
        "rows": len(length),
        "lengths": analysis.length_summary(length),
        "at_limit": int((length >= limit).sum()),
    }
    if "answers" in rows:
        out["answer_tokens"] = int(sum(a.sum() for a in rows["answers"]))
    return out


def _sources(entries: list[dict], what: str) -> list[dict]:
    """Per entry: the data stage's counts, and its share of the answer tokens (GRPO: of the prompts)."""
    key = "rows_kept" if what == GRPO else "trained_tokens"
    total = sum(e.get(key) or 0 for e in entries)
    return [{**e, f"share_of_{'rows' if what == GRPO else 'trained_tokens'}": round((e.get(key) or 0) / total, 4) if total else 0.0} for e in entries]  # fmt: skip


def _overlap(train: dict, other: dict, grams) -> dict:
    found = contamination.overlap(train["prompts"], other["prompts"], grams)
    return {k: v for k, v in found.items() if not isinstance(v, np.ndarray)}


def histogram(found: dict, train_length: np.ndarray, bins: int = 40) -> dict:
    """Lengths of all training rows (one series: no per-row source), with the limit in range."""
    top = max(found["length_limit"], int(train_length.max()) if len(train_length) else 1)
    edges = np.linspace(0, top, bins + 1).round().astype(int)
    return {"edges": edges.tolist(), "counts": {"all": np.histogram(train_length, bins=edges)[0].tolist()}}


def markdown(found: dict) -> str:
    """data_report.md for these methods (also what `finetune data` prints)."""
    train, what = found["train"], found["kind"]
    ln = train["lengths"] or {}
    measured = {PAIRS: "prompt + longer answer", KTO: "prompt + completion", GRPO: "prompt"}[what]
    lines = ["# Data report", "", f"Prepared data: `{found['prepared']}`; {what}; sequence_len {found['sequence_len']}"
             + (f" (prompts up to {found['length_limit']}: the rest is max_completion_length)" if what == GRPO else "") + ".", "",
             f"- {train['rows']:,} train rows, {(found['eval'] or {}).get('rows', 0):,} eval rows"
             + (f"; {found['desirable']:,} desirable, {found['undesirable']:,} undesirable" if what == KTO else ""),
             f"- lengths ({measured}) p50 {ln.get('p50', 0):.0f}, p99 {ln.get('p99', 0):.0f}, max {ln.get('max', 0)}; "
             f"{train['at_limit']:,} rows at the limit {found['length_limit']}",
             f"- removed: {', '.join(f'{k} {v:,}' for k, v in found['removed'].items()) or 'none'}",
             f"- exact duplicates (normalised text of the whole row): {found['exact_duplicates']['rows']:,}; "
             f"rows repeating an earlier row's prompt: {found['repeated_prompts']['rows']:,}", "",
             "## Sources", ""]  # fmt: skip
    share = "share_of_rows" if what == GRPO else "share_of_trained_tokens"
    head = "| source | weight | read | weighted | kept | " + (
        "share of rows |"
        if what == GRPO
        else "tokens | answer tokens (before weight) | share of answer tokens |"
    )
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for s in found["sources"]:
        cells = [
            f"{s['key']} `{s['path']}`",
            f"{s['weight']:g}",
            f"{s['rows_read']:,}",
            f"{s['rows_weighted']:,}",
            f"{s['rows_kept']:,}",
        ]
        if what != GRPO:
            before = s.get("trained_tokens_before")
            cells += [
                f"{s.get('tokens', 0):,}",
                f"{s.get('trained_tokens', 0):,}"
                + (f" ({before:,})" if before is not None and s["weight"] != 1 else ""),
            ]
        lines.append("| " + " | ".join([*cells, f"{s[share]:.1%}"]) + " |")
    lines += [
        "",
        "## Overlap with the training prompts",
        "",
        "| rows of | rows | exact prompt | share a 13-gram | under 13 words |",
        "|---|---|---|---|---|",
    ]
    lines += analysis.overlap_table_rows(found)
    lines += ["", "Not reported for this method: " + "; ".join(found["not_reported"]) + "."]
    return "\n".join(lines) + "\n"  # fmt: skip
