"""The data stage for `rl: grpo`: the SFT datasets' rows -> (prompt, reference) text, nothing tokenized.

GRPO generates its own completions, so of each row it needs only the prompt, laid out exactly as SFT
training lays it out (the same `datasets:` entries and formats: a custom `type:` dict, alpaca, chat_template),
and the answer, which reward functions receive as `reference`. TRL tokenizes the prompts itself, adding the
tokenizer's special tokens: a chat template that writes BOS itself has that BOS taken off here, so the prompt
is not given two.

Columns: `prompt`, `reference`, `source` (`file.jsonl:LINE`, so a reward function that fails can be pointed
at its row). A row missing a field is one line naming the file, line and field (UserError, exit 2), found
before any model is loaded. Prompts whose tokens + max_completion_length exceed sequence_len are dropped and
counted. Nothing is cached: there is nothing to tokenize ahead.
"""

from __future__ import annotations

from finetune.config import Config
from finetune.config.trl_keys import grpo_settings
from finetune.data import chat, formats, sources
from finetune.data.rows import RowError
from finetune.errors import UserError


def completion_length(cfg: Config) -> int:
    return grpo_settings(cfg.trl)["max_completion_length"]


def build(cfg: Config, tokenizer):
    """(train Dataset of prompt/reference/source, None, stats); raises UserError on the first bad row."""
    import datasets

    columns: dict[str, list[str]] = {"prompt": [], "reference": [], "source": []}
    stats = {"rows_in": 0, "rows_kept": 0, "dropped_too_long": 0, "empty_prompt": 0}
    room = cfg.sequence_len - completion_length(cfg)
    if room <= 0:
        raise UserError(
            f"trl.max_completion_length: {completion_length(cfg)} leaves no room for a prompt in "
            f"sequence_len {cfg.sequence_len}: raise sequence_len or lower it"
        )
    bos, entries = _bos_added_by(tokenizer), []
    for i, ds in enumerate(cfg.datasets):
        where = f"datasets[{i}]"
        fmt = formats.build_format(cfg, ds, where, tokenizer)
        if isinstance(fmt.spec, formats.SegmentsSpec):
            raise UserError(f"{where}.type: input_output has no prompt/answer split for rl: grpo")
        loaded, before = sources.load_sources(ds, where, cfg.seed), len(columns["prompt"])
        for src in loaded:
            prompts, references, rows = [], [], []
            for n, row in enumerate(src.dataset):
                stats["rows_in"] += 1
                try:
                    prompt, reference = prompt_and_reference(fmt.spec, row, tokenizer)
                except RowError as exc:
                    raise UserError(f"{src.where(n)}: {exc} ({where}, rl: grpo)") from None
                if bos and prompt.startswith(bos):
                    prompt = prompt[len(bos) :]
                if not prompt.strip():
                    stats["empty_prompt"] += 1
                    continue
                prompts.append(prompt)
                references.append(reference)
                rows.append(n)
            lengths = [len(ids) for ids in tokenizer(prompts)["input_ids"]] if prompts else []
            for prompt, reference, n, length in zip(prompts, references, rows, lengths, strict=True):
                if length > room:
                    stats["dropped_too_long"] += 1
                    continue
                columns["prompt"].append(prompt)
                columns["reference"].append(reference)
                columns["source"].append(src.where(n))
        entries.append(
            {
                "key": where,
                "path": ds.path,
                "weight": ds.weight,
                "rows_read": sum(s.rows_read if s.rows_read is not None else len(s.dataset) for s in loaded),
                "rows_weighted": sum(len(s.dataset) for s in loaded),
                "rows_kept": len(columns["prompt"]) - before,
            }
        )
    stats["sources"] = entries
    stats["rows_kept"] = stats["train_rows"] = len(columns["prompt"])
    stats["eval_rows"] = 0
    stats["sequence_len"], stats["max_completion_length"] = cfg.sequence_len, completion_length(cfg)
    if not columns["prompt"]:
        raise UserError(
            f"datasets: no prompts left for rl: grpo ({stats['dropped_too_long']} longer than sequence_len "
            f"- max_completion_length, {stats['empty_prompt']} empty)"
        )
    return datasets.Dataset.from_dict(columns), None, stats


def prompt_and_reference(spec, row: dict, tokenizer) -> tuple[str, str]:
    """The prompt text as SFT training lays it out (chat: ending with the assistant header) and the answer."""
    if isinstance(spec, chat.ChatSpec):
        messages = chat.chat_messages(spec, row)
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=len(messages))
        reference = messages[last]["content"] if last < len(messages) else ""
        prompt = chat.render_chat(spec, tokenizer, messages[:last], add_generation_prompt=True)
        return prompt, reference
    return formats.render_text(spec, row)


def _bos_added_by(tokenizer) -> str | None:
    """The BOS text when the tokenizer adds BOS to a plain text (as TRL's prompt tokenization will)."""
    bos_id = tokenizer.bos_token_id
    if bos_id is None:
        return None
    ids = tokenizer("x")["input_ids"]
    return tokenizer.bos_token if ids and ids[0] == bos_id else None
