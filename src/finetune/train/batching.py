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
- `group_by_length`: HF's LengthGroupedSampler, micro_batch_size rows a batch.
- `random`: micro_batch_size random rows a batch, padded to the longest.

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

import numpy as np

from finetune.config import Config
from finetune.data.rows import IGNORE

# ---------------------------------------------------------------- batches from lengths


# A micro-batch's fixed cost (weights dequantized, kernels launched, Python) in token-equivalents: measured on
# CPU with a 20M-parameter QLoRA Llama, 1,024 tokens took 0.95 s and 4,096 tokens 3.28 s (~200 tokens fixed).
BATCH_COST_TOKENS = 200


def cut_points(sorted_lengths: np.ndarray, budget: int, batch_cost: int = BATCH_COST_TOKENS) -> list[int]:
    """Where to cut rows sorted by length into batches of at most `budget` padded tokens, so that padded
    tokens + batch_cost per batch is smallest (exact, by dynamic programming over the sorted rows).

    A greedy fill would put the last short rows in a batch with the first long ones and pad them all to the
    long length (measured: 12% padding vs 3% on the FinLoRA benchmark rows).
    """
    n = len(sorted_lengths)
    cost = np.full(n + 1, np.inf)
    cost[0] = 0
    start = np.zeros(n + 1, dtype=np.int64)
    for i in range(1, n + 1):  # rows j..i-1 as the last batch: (i - j) rows padded to sorted_lengths[i - 1]
        longest = int(sorted_lengths[i - 1])
        j0 = max(0, i - max(1, budget // max(1, longest)))
        total = cost[j0:i] + (i - np.arange(j0, i)) * longest
        k = int(np.argmin(total))
        cost[i], start[i] = total[k] + batch_cost, j0 + k
    cuts = [n]
    while cuts[-1] > 0:
        cuts.append(int(start[cuts[-1]]))
    return cuts[::-1]


def sorted_order(
    lengths: np.ndarray, rng: np.random.Generator | None, descending: bool = False
) -> np.ndarray:
    """Row indices sorted by length; rows of equal length in random order (or by index without rng)."""
    ties = rng.random(len(lengths)) if rng is not None else np.arange(len(lengths))
    return np.lexsort((ties, -lengths if descending else lengths))


def budget_batches(
    lengths: np.ndarray, budget: int, rng: np.random.Generator | None, cuts: list[int] | None = None
) -> list[np.ndarray]:
    """Rows sorted by length (ties in random order), cut where `cut_points` says (rows x longest <= budget)."""
    order = sorted_order(lengths, rng)
    cuts = cuts if cuts is not None else cut_points(lengths[order], budget)
    return [order[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True)]


def ffd_batches(lengths: np.ndarray, budget: int, rng: np.random.Generator | None) -> list[np.ndarray]:
    """First-fit-decreasing bins of at most `budget` tokens (ties in random order); each bin is one batch."""
    order = sorted_order(lengths, rng, descending=True)
    room = np.empty(0, dtype=np.int64)
    members: list[list[int]] = []
    for i in order:
        fits = np.flatnonzero(room >= lengths[i])
        if fits.size:
            b = int(fits[0])
            room[b] -= lengths[i]
            members[b].append(int(i))
        else:
            room = np.append(room, budget - lengths[i])
            members.append([int(i)])
    return [np.array(m, dtype=np.int64) for m in members]


def cost(batch: np.ndarray, lengths: np.ndarray, packed: bool) -> int:
    """Tokens a batch computes: its real tokens when packed, rows × longest row when padded."""
    lens = lengths[batch]
    return int(lens.sum()) if packed else int(len(lens) * lens.max())


def split_for_ranks(batches: list[np.ndarray], world_size: int) -> list[np.ndarray]:
    """Make the batch count a multiple of world_size by halving the batches with most rows.

    Every rank must run the same number of steps (DDP and DeepSpeed wait for each other). When there are
    not enough multi-row batches to split, batches are repeated from the start (a few rows seen twice).
    """
    batches = list(batches)
    while len(batches) % world_size:
        biggest = max(range(len(batches)), key=lambda k: len(batches[k]))
        if len(batches[biggest]) < 2:
            batches += batches[: world_size - len(batches) % world_size]
            break
        b = batches.pop(biggest)
        batches += [b[: len(b) // 2], b[len(b) // 2 :]]
    return batches


class TokenBatchSampler:
    """Token-budget batches of dataset indices, deterministic in (seed, epoch); a DataLoader batch_sampler.

    Yields the global batch list: with world_size W, batch k·W + r is rank r's k-th batch (accelerate's
    BatchSamplerShard deals them so). `set_epoch` is called by the Trainer (and EpochToSampler) each epoch.
    """

    def __init__(
        self,
        lengths,
        budget: int,
        packed: bool,
        seed: int = 0,
        shuffle: bool = True,
        world_size: int = 1,
    ):
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.budget, self.packed, self.seed, self.shuffle = budget, packed, seed, shuffle
        self.world_size = max(1, world_size)
        self.epoch = 0
        self._cache: tuple[int, list[np.ndarray]] | None = None
        # the cuts depend only on the sorted lengths: the same every epoch (so is the number of batches)
        self._cuts = None if packed else cut_points(np.sort(self.lengths), budget)
        self._len = len(self.batches(0))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def batches(self, epoch: int) -> list[np.ndarray]:
        """The global batch list of an epoch (rank-interleaved when world_size > 1)."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        rng = np.random.default_rng([self.seed, epoch]) if self.shuffle else None
        if self.packed:
            batches = ffd_batches(self.lengths, self.budget, rng)
        else:
            batches = budget_batches(self.lengths, self.budget, rng, self._cuts)
        batches = split_for_ranks(batches, self.world_size)
        w = self.world_size
        if w > 1:  # the w batches of one step have similar cost, so no rank waits long for the others
            batches.sort(key=lambda b: cost(b, self.lengths, self.packed))
            steps = [batches[k : k + w] for k in range(0, len(batches), w)]
            if rng is not None:
                steps = [steps[k] for k in rng.permutation(len(steps))]
                steps = [[s[k] for k in rng.permutation(w)] for s in steps]
            batches = [b for s in steps for b in s]
        elif rng is not None:
            batches = [batches[k] for k in rng.permutation(len(batches))]
        self._cache = (epoch, batches)
        return batches

    def rank_batches(self, epoch: int, rank: int) -> list[np.ndarray]:
        return self.batches(epoch)[rank :: self.world_size]

    def __iter__(self):
        for batch in self.batches(self.epoch):
            yield batch.tolist()

    def __len__(self) -> int:
        return self._len

    @property
    def batches_per_rank(self) -> int:
        return self._len // self.world_size


def dataset_lengths(dataset) -> np.ndarray:
    """Token count of every row (works on selected/shuffled datasets: their index mapping is honoured)."""
    import pyarrow.compute as pc

    table = dataset.select_columns(["input_ids"]).with_format("arrow")[:]
    return pc.list_value_length(table["input_ids"]).to_numpy(zero_copy_only=False).astype(np.int64)


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
class Plan:
    strategy: str  # packed | length_budget | group_by_length | random
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
    if cfg.group_by_length:
        return "group_by_length", f"{cfg.micro_batch_size} rows of similar length a batch"
    return "random", f"{cfg.micro_batch_size} random rows a batch, padded to the longest"


def plan(
    cfg: Config,
    tokenizer,
    train_set,
    eval_set,
    attn_implementation: str,
    on_gpu: bool | None = None,
    world_size: int | None = None,
) -> Plan:
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
    packed = strategy == "packed"
    flash = "flash" in (attn_implementation or "")
    train_sampler = None
    if token_strategy:
        train_sampler = TokenBatchSampler(
            dataset_lengths(train_set), budget, packed, seed=cfg.seed, world_size=world_size
        )
    collator = PackedCollator(flash_kwargs=flash) if packed else padded

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
    return Plan(
        strategy,
        reason,
        budget if token_strategy else None,
        train_sampler,
        eval_sampler,
        collator,
        eval_collator,
        notes,
    )
