"""Before anything is loaded: will this run fit the device it is on? `finetune plan`'s estimate, run first.

A run predicted not to fit stops with one line (the prediction and the smallest fix), exit 2, nothing
written; `--no-fit-check` runs it anyway. `micro_batch_size: auto` becomes the largest power of two that fits.
The prediction is kept for all_results.json and the card, beside the measured peak.
"""

from __future__ import annotations

import os

from finetune.config import Config
from finetune.errors import UserError


def this_device(memory_gib: float | None):
    """The GPU this process trains on (as CUDA names it), else the CPU; --memory replaces its size."""
    import torch

    from finetune import plan

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        device = plan.devices.from_name(props.name, props.total_memory / plan.devices.GIB)
        if memory_gib:
            device = plan.Device(device.name, memory_gib, device.peak_tflops, True)
        return device
    return plan.cpu_device(memory_gib)


def check(cfg: Config, enabled: bool, memory_gib: float | None, smoke: bool, notes: list[str]):
    """(cfg with micro_batch_size resolved, facts for all_results.json, the plan or None when there is none).
    Raises UserError when it won't fit."""
    from finetune.plan import report

    gpus = int(os.environ.get("WORLD_SIZE", "1"))
    device = this_device(memory_gib)
    try:
        plan = report.make_plan(cfg, device, gpus)
    except UserError as exc:  # a base the planner cannot read: the loader will say more, or load it
        if cfg.micro_batch_size == "auto":
            raise
        notes.append(f"fit check skipped: {exc.problems[0]}")
        return cfg, {}, None
    if cfg.micro_batch_size == "auto":
        cfg = cfg.model_copy(update={"micro_batch_size": plan.micro_batch})
        notes.append(
            f"micro_batch_size: auto -> {plan.micro_batch} (the largest power of two predicted to fit "
            f"{device.memory_gib:.1f} GiB: {plan.peak_gib:.1f} GiB)"
        )
    if enabled and not smoke and not plan.fits:
        raise UserError(report.refusal(plan))
    if not plan.fits:
        notes.append(report.refusal(plan).replace("; --no-fit-check runs anyway", ""))
    if device.is_gpu:  # the same measure as peak_gpu_memory_mb (torch.cuda.max_memory_allocated)
        return cfg, {"predicted_peak_gpu_memory_mb": round(plan.allocated_gib * 1024, 1)}, plan
    return cfg, {"predicted_peak_cpu_memory_mb": round(plan.peak_gib * 1024, 1)}, plan


def cpu_heap(cfg: Config, train_set, checked, predicted: dict, notes: list[str]) -> str:
    """Once the data is known, the CPU heap this run trains with (model.compute.cpu_heap): "fast", or
    "compact" when the fast heap's worst case for the longest batch this data can make could exceed the RAM.

    The check above sizes batches at sequence_len (the plan's contract: any data of this config fits); here a
    padded batch is micro_batch_size x the longest row (short rows are the common case: fpb's are ~100 tokens
    under a sequence_len of 512), so a run is not slowed down for a batch it cannot see. Packed batches keep
    the full budget. `checked`: check()'s plan (its device and shapes); recorded in `predicted`
    (all_results.json)."""
    from finetune.plan import estimate

    if checked is None or checked.device.is_gpu:  # a smoke run, a base the plan cannot read, or a GPU
        return "fast"
    longest = longest_row(train_set)
    sized = cfg
    if longest and not cfg.sample_packing and longest < cfg.sequence_len:
        sized = cfg.model_copy(update={"sequence_len": longest})
    plan = estimate(sized, checked.device, 1, checked.shape)
    predicted["predicted_peak_cpu_memory_mb_for_data"] = round(plan.peak_gib * 1024, 1)
    heap = "compact" if tight_ram(plan) else "fast"
    predicted["cpu_heap"] = heap
    if heap == "compact":
        notes.append(
            f"RAM is tight for the fast heap (up to {plan.fast_heap_worst_gib:.1f} GiB of "
            f"{plan.device.memory_gib:.1f} GiB): freed tensors go back to the OS at once (compact heap), so RSS "
            f"follows the prediction ({plan.peak_gib:.1f} GiB); steps are slower"
        )
    return heap


def tight_ram(plan) -> bool:
    """Would the fast heap's slack (model.compute.cpu_heap) risk the machine's RAM? Its peak RSS was measured
    at up to devices.CPU_FAST_HEAP_FACTOR x the plan's tensors (beyond the runtime); the plan made the same
    judgement when it chose its heap (plan.estimate)."""
    return plan.cpu_heap == "compact"


def longest_row(table) -> int | None:
    """The longest input_ids row of a tokenized table (Arrow list lengths, no Python loop over rows), over the
    whole table a selected view comes from (at worst longer: a safe side); None for tables of another layout
    (preference pairs, prompts)."""
    if table is None or "input_ids" not in getattr(table, "column_names", ()) or not len(table):
        return None
    import pyarrow.compute as pc

    return int(pc.max(pc.list_value_length(table.data.column("input_ids"))).as_py())
