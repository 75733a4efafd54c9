"""Token-budget batches from row lengths (batching.py's `packed` and `length_budget` strategies): where to cut a
length-sorted list, first-fit-decreasing bins, the per-rank layout, and the sampler that replays them per epoch.
Pure numpy: no model, no tokenizer."""

from __future__ import annotations

import numpy as np

from finetune.data.batch_cuts import BATCH_COST_TOKENS, cut_points  # noqa: F401 - batching re-exports them


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
