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
    """(cfg with micro_batch_size resolved, facts for all_results.json). Raises UserError when it won't fit."""
    from finetune.plan import report

    gpus = int(os.environ.get("WORLD_SIZE", "1"))
    device = this_device(memory_gib)
    try:
        plan = report.make_plan(cfg, device, gpus)
    except UserError as exc:  # a base the planner cannot read: the loader will say more, or load it
        if cfg.micro_batch_size == "auto":
            raise
        notes.append(f"fit check skipped: {exc.problems[0]}")
        return cfg, {}
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
        return cfg, {"predicted_peak_gpu_memory_mb": round(plan.allocated_gib * 1024, 1)}
    facts = {"predicted_peak_cpu_memory_mb": round(plan.peak_gib * 1024, 1), "cpu_heap": "fast"}
    if tight_ram(plan):
        facts["cpu_heap"] = "compact"
        notes.append(
            f"RAM is tight for the fast heap (up to {plan.fast_heap_worst_gib:.1f} GiB of "
            f"{device.memory_gib:.1f} GiB): freed tensors go back to the OS at once (compact heap), so RSS "
            f"follows the prediction ({plan.peak_gib:.1f} GiB); steps are slower"
        )
    return cfg, facts


def tight_ram(plan) -> bool:
    """Would the fast heap's slack (model.compute.cpu_heap) risk the machine's RAM? Its peak RSS was measured
    at up to devices.CPU_FAST_HEAP_FACTOR x the plan's tensors (beyond the runtime)."""
    return plan.fast_heap_worst_gib > plan.device.memory_gib
