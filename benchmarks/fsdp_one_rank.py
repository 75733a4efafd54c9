"""`finetune train` as FSDP2 with a single rank, for gpu_check.py on a machine with one GPU.

    python -m torch.distributed.run --nproc-per-node 1 benchmarks/fsdp_one_rank.py train CONFIG [--resume ...]

finetune trains one process without FSDP (train/fsdp.trainer_arguments: nothing to shard), and two ranks cannot
share one GPU (NCCL refuses a duplicate GPU). A one-rank FSDP2 mesh still runs every GPU-only part of the
engine a multi-GPU run uses: accelerate's FSDP2 preparation on CUDA, the FULL_STATE_DICT checkpoint (gathered
to rank 0) and resuming from it. This script is the one place that asks for it: it makes trainer_arguments see
a world of two for its one-process early return only, then runs finetune's own CLI unchanged.
"""

from __future__ import annotations

import sys

from finetune import cli
from finetune.train import fsdp

_trainer_arguments = fsdp.trainer_arguments


def fsdp_even_for_one_rank(cfg, world_size: int, on_gpu: bool, notes: list[str]) -> dict:
    """fsdp.trainer_arguments without its one-process shortcut (world_size feeds nothing else there). On CPU
    (tests/plan/test_gpu_check.py runs this script there) the Trainer sees a process group only with use_cpu, which
    finetune sets for several processes only."""
    arguments = _trainer_arguments(cfg, max(world_size, 2), on_gpu, notes)
    return {**arguments, "use_cpu": True} if arguments and not on_gpu else arguments


if __name__ == "__main__":
    fsdp.trainer_arguments = fsdp_even_for_one_rank  # read at call time by train/arguments.py
    sys.argv = ["finetune", *sys.argv[1:]]
    cli.main()
