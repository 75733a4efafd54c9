"""How rows become micro-batches: no compute spent on padding, with the strategy chosen for the device.

`plan(cfg, ...)` picks one strategy and returns the sampler and collators that carry it out:

- `packed` (sample_packing on a GPU with flash attention): rows are put into bins of at most
  micro_batch_size × sequence_len tokens by first-fit-decreasing; each bin is one padding-free row, the
  sequences concatenated with position_ids restarting at 0 and no attention_mask. flash-attention's varlen
  kernel reads the restarts and keeps the sequences apart, so no compute goes to padding or cross-attention.
- `length_budget` (sample_packing anywhere else: CPU, or sdpa/eager attention): rows sorted by length and cut
  into batches of at most micro_batch_size × sequence_len *padded* tokens, the cuts placed where they waste
  least (`cut_points`). On CPU sdpa computes the full T×T attention of a packed row even where the mask is
  zero, so long packed rows are slower than padding there (FACTS.md); length-sorted budget batches measured
  fastest (BENCHMARKS.md).
- `flattened` (batch_flattening): micro_batch_size rows a batch, as unpacked (so the same optimizer steps),
  flattened into one padding-free row by transformers' DataCollatorWithFlattening (position_ids restarting,
  axolotl's `batch_flattening`). On a GPU with flash attention its varlen kernel keeps the rows apart; with sdpa
  (CPU, or a GPU without flash_attn) the model is switched to sdpa run one sequence at a time
  (model/sequence_attention.py), so no slot goes to padding and no row attends to another.
- `group_by_length`: HF's LengthGroupedSampler, micro_batch_size rows a batch. Also what batch_flattening
  becomes where neither kernel can serve it (eager attention, a model that does not dispatch through
  transformers' AttentionInterface): rows of similar length lose most of the padding.
- `random`: micro_batch_size random rows a batch, padded to the longest.

sample_packing changes what a step is (a token budget, so short rows give far fewer steps); the last three keep
micro_batch_size rows a step, so an epoch has the unpacked number of optimizer steps.

Token-budget batches (the first two) are built by `TokenBatchSampler`: every row once per epoch, the batch
order reshuffled per epoch from (seed, epoch) only, so `--resume` skips exactly the batches already trained.
Which rows share a batch is decided by their lengths (ties broken at random per epoch), so the number of
batches is the same every epoch: the LR schedule is computed from it (`batches_per_epoch`). In a run of W
processes the batch list is made a multiple of W (by splitting the batches with most rows) and laid out so
that batch k·W + r goes to rank r — what accelerate's `BatchSamplerShard` deals — with the W batches of one
step of similar cost; every rank gets the same number of batches, as DDP and DeepSpeed need.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from finetune import methods
from finetune.config import Config
from finetune.data.rows import IGNORE
from finetune.model.sequence_attention import SEQUENCE_SDPA, use_sequence_attention
from finetune.train.token_batches import (  # noqa: F401 - re-exported: batching is the stage's entry
    BATCH_COST_TOKENS,
    TokenBatchSampler,
    budget_batches,
    cost,
    cut_points,
    dataset_lengths,
    ffd_batches,
    sorted_order,
    split_for_ranks,
)

# ---------------------------------------------------------------- collators


class PackedCollator:
    """Padding-free batch: the rows concatenated into one, position_ids restarting at 0, no attention_mask.

    The first label of each sequence is -100, so the last token of a sequence is not trained to predict the
    first token of the next. `use_cache=False` rides along: transformers detects packed sequences from
    position_ids only when no cache exists (with one, sequences silently attend to each other; FACTS.md).
    """

    def __init__(self, flash_kwargs: bool = False):
        from transformers import DataCollatorWithFlattening

        self.flatten = DataCollatorWithFlattening(
            return_position_ids=True, separator_id=IGNORE, return_flash_attn_kwargs=flash_kwargs
        )

    def __call__(self, features):
        features = [{"input_ids": f["input_ids"], "labels": f["labels"]} for f in features]
        return {**self.flatten(features), "use_cache": False}


def padded_collator(cfg: Config, tokenizer, full_length: bool = False):
    """Rows padded to the longest in the batch (or to sequence_len), labels padded with -100."""
    from transformers import DataCollatorForSeq2Seq

    return DataCollatorForSeq2Seq(
        tokenizer,
        padding="max_length" if full_length else True,
        max_length=cfg.sequence_len if full_length else None,
        label_pad_token_id=IGNORE,
    )


# ---------------------------------------------------------------- the plan


@dataclass
class BatchPlan:
    strategy: str  # packed | length_budget | flattened | group_by_length | random
    reason: str  # one line for the console and the run summary
    token_budget: int | None
    train_sampler: TokenBatchSampler | None  # None: the Trainer's own sampler (train_sampling_strategy)
    eval_sampler: TokenBatchSampler | None
    train_collator: Any
    eval_collator: Any
    notes: list[str]

    @property
    def batches_per_epoch(self) -> int | None:
        """Batches per process per epoch when token-budget batches decide it; None: rows / micro_batch_size."""
        return self.train_sampler.batches_per_rank if self.train_sampler is not None else None

    @property
    def summary(self) -> str:
        return f"{self.strategy} ({self.reason})"


def choose(cfg: Config, attn_implementation: str, on_gpu: bool) -> tuple[str, str]:
    """(strategy, why) for this config on this device."""
    budget = cfg.micro_batch_size * cfg.sequence_len
    if cfg.sample_packing:
        if on_gpu and "flash" in (attn_implementation or ""):
            return "packed", f"padding-free rows of up to {budget:,} tokens, flash-attention varlen"
        where = "CPU" if not on_gpu else f"{attn_implementation} attention"
        return "length_budget", (
            f"rows sorted by length in batches of up to {budget:,} padded tokens; on {where} a packed row "
            "costs full attention over its whole length, so packing would be slower here"
        )
    flash = on_gpu and "flash" in (attn_implementation or "")
    flattened = f"{cfg.micro_batch_size} rows a batch flattened into one padding-free row"
    if flattening(cfg) and flash:
        return "flattened", f"{flattened}, flash-attention varlen"
    if flattening(cfg) and attn_implementation == SEQUENCE_SDPA:
        return "flattened", f"{flattened}, sdpa run per sequence (no varlen kernel here)"
    if cfg.batch_flattening:  # asked for, and neither kernel can keep the rows apart
        return "group_by_length", (
            f"{cfg.micro_batch_size} rows of similar length a batch: batch_flattening needs flash-attention "
            f"varlen or sdpa, and this model runs {attn_implementation} attention"
        )
    if cfg.group_by_length:
        return "group_by_length", f"{cfg.micro_batch_size} rows of similar length a batch"
    return "random", f"{cfg.micro_batch_size} random rows a batch, padded to the longest"


def flattening(cfg: Config) -> bool:
    """Whether this run flattens its batches where attention allows: batch_flattening: true, or unset (the
    default) for SFT batches that no other key shapes (sample_packing, group_by_length, pad_to_sequence_len).
    The padded batch's arithmetic (tests) and held-out accuracy on the real model (BENCHMARKS.md), no padding."""
    if cfg.sample_packing:
        return False
    if cfg.batch_flattening is not None:
        return cfg.batch_flattening
    return methods.of(cfg).answers and not (cfg.group_by_length or cfg.pad_to_sequence_len)


def attention_for(cfg: Config, model, attn_implementation: str) -> str:
    """The attention the run trains with: flattening without flash-attention switches an sdpa model to sdpa one
    sequence at a time (`flattened` above); anything else trains as loaded."""
    if flattening(cfg) and attn_implementation == "sdpa" and use_sequence_attention(model):
        return SEQUENCE_SDPA
    return attn_implementation


def plan(
    cfg: Config,
    tokenizer,
    train_set,
    eval_set,
    attn_implementation: str,
    on_gpu: bool | None = None,
    world_size: int | None = None,
) -> BatchPlan:
    """The batching of this run: strategy, samplers and collators (see the module docstring)."""
    if on_gpu is None:
        import torch

        on_gpu = torch.cuda.is_available()
    if world_size is None:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
    strategy, reason = choose(cfg, attn_implementation, on_gpu)
    notes: list[str] = []
    budget = cfg.micro_batch_size * cfg.sequence_len
    token_strategy = strategy in ("packed", "length_budget")
    # pad_to_sequence_len keeps a GPU's memory use the same every step; it never changes the loss (padding is
    # masked), so where it only costs time it is left out, and said so
    full_length = bool(cfg.pad_to_sequence_len)
    if token_strategy and full_length:
        notes.append("pad_to_sequence_len: ignored with sample_packing (batches are cut to a token budget)")
        full_length = False
    elif full_length and not on_gpu:
        notes.append(
            f"pad_to_sequence_len: ignored on CPU (it steadies GPU memory; here padding every row to "
            f"{cfg.sequence_len:,} tokens would only cost time — the loss is the same)"
        )
        full_length = False
    padded = padded_collator(cfg, tokenizer, full_length=full_length)
    if cfg.sample_packing and cfg.group_by_length:
        notes.append("group_by_length: sample_packing already batches by length; it decides the batches")
    if cfg.sample_packing and cfg.batch_flattening:
        notes.append("batch_flattening: ignored with sample_packing (it already removes the padding)")
    packed = strategy == "packed"
    flash = "flash" in (attn_implementation or "")
    train_sampler = None
    if token_strategy:
        train_sampler = TokenBatchSampler(
            dataset_lengths(train_set), budget, packed, seed=cfg.seed, world_size=world_size
        )
    if packed or strategy == "flattened":  # flattened rows carry their bounds for the attention to read
        collator = PackedCollator(flash_kwargs=flash or strategy == "flattened")
    else:
        collator = padded

    eval_sampler, eval_collator = None, padded_collator(cfg, tokenizer, full_length=full_length)
    eval_packing = cfg.eval_sample_packing if cfg.eval_sample_packing is not None else cfg.sample_packing
    if eval_set is not None and eval_packing:
        if world_size > 1:
            notes.append(
                "eval_sample_packing: off in multi-process runs (evaluation batches of varying size are not "
                "gathered exactly across processes); evaluation pads per batch"
            )
        else:
            eval_strategy, _ = choose(
                cfg.model_copy(update={"sample_packing": True}), attn_implementation, on_gpu
            )
            eval_packed = eval_strategy == "packed"
            eval_sampler = TokenBatchSampler(
                dataset_lengths(eval_set), budget, eval_packed, shuffle=False, world_size=1
            )
            eval_collator = (
                PackedCollator(flash_kwargs=flash) if eval_packed else padded_collator(cfg, tokenizer)
            )
    return BatchPlan(
        strategy,
        reason,
        budget if token_strategy else None,
        train_sampler,
        eval_sampler,
        collator,
        eval_collator,
        notes,
    )
