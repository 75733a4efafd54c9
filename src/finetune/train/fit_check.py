"""Will this run fit the device it is on? `finetune plan`'s estimate, run twice: first before anything is
loaded (the worst case, every row at sequence_len; micro_batch_size: auto is resolved from it), then once the
data is prepared, for the largest micro-batch this data makes (data.length_stats), on a GPU as on a CPU.

A run predicted not to fit stops with one line (the prediction and the smallest fix), exit 2, nothing written
to output_dir; `--no-fit-check` runs it anyway. On a CPU, N processes (--num-processes) share the machine's RAM:
N x the peak must fit. The predictions are kept for all_results.json and the card, beside the measured peak.
"""

from __future__ import annotations

import os

from finetune import data, methods, plan
from finetune.config import Config
from finetune.errors import UserError
from finetune.plan import report


def this_device(memory_gib: float | None):
    """The GPU this process trains on (as CUDA names it), else the CPU; --memory replaces its size."""
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        device = plan.devices.from_name(props.name, props.total_memory / plan.devices.GIB)
        if memory_gib:
            device = plan.Device(device.name, memory_gib, device.peak_tflops, True)
        return device
    return plan.cpu_device(memory_gib)


def check(cfg: Config, enabled: bool, memory_gib: float | None, smoke: bool, notes: list[str]):
    """(cfg with micro_batch_size resolved, facts for all_results.json, the plan or None when there is none).

    Before the data is read the plan is the worst case (every row at sequence_len). A run that could not fit
    even with one-token rows stops here (UserError), before anything is loaded; one that does not fit only at
    sequence_len is judged again with the data's largest micro-batch (`judge`), so a long sequence_len with
    short rows is not refused. Pairs and prompts (no lengths to read) are judged here at sequence_len."""
    gpus = int(os.environ.get("WORLD_SIZE", "1"))
    device = this_device(memory_gib)
    processes = None if device.is_gpu else int(os.environ.get("LOCAL_WORLD_SIZE", str(gpus)))
    try:
        plan = report.make_plan(cfg, device, gpus, processes=processes)
    except UserError as exc:  # a base the planner cannot read: the loader will say more, or load it
        if cfg.micro_batch_size == "auto":
            raise
        notes.append(f"fit check skipped: {exc.problems[0]}")
        return cfg, {}, None
    if cfg.micro_batch_size == "auto":
        cfg = cfg.model_copy(update={"micro_batch_size": plan.micro_batch})
        notes.append(
            f"micro_batch_size: auto -> {plan.micro_batch} (the largest power of two predicted to fit "
            f"{device.memory_gib:.1f} GiB with every row at sequence_len: {plan.peak_gib:.1f} GiB)"
        )
    if not plan.fits and methods.of(cfg).by_trl:
        verdict(plan, enabled and not smoke, notes)
    elif not plan.fits:  # the smallest batch there can be: if that does not fit, no data will
        tiny = {"rows": 1, "tokens": 1, "longest": 1}
        floor = report.make_plan(cfg, device, gpus, tiny, processes, shape=plan.shape)
        if not floor.fits:
            verdict(plan, enabled and not smoke, notes)
    return cfg, facts(plan), plan


def judge(cfg: Config, train_set, checked, enabled: bool, predicted: dict, notes: list[str]) -> str:
    """Once the data is prepared: the fit judged again for the largest micro-batch this data makes (micro_batch_size
    x the longest row, or the token budget; data.length_stats gives the lengths), on a GPU as on a CPU — stops
    with UserError when it does not fit (`enabled`) — and on a CPU the heap it trains with
    (model.compute.cpu_heap): "fast", or "compact" when the fast heap's worst case for that batch could exceed
    the RAM. `checked`: check()'s plan (its device and shapes); recorded in `predicted` (all_results.json)."""
    if checked is None:  # a smoke run, or a base the plan cannot read
        return "fast"
    lengths = data.length_stats(cfg, table=train_set)
    if lengths is None:  # pairs, prompts: check() judged them at sequence_len
        return "fast" if checked.device.is_gpu else ("compact" if tight_ram(checked) else "fast")
    plan = report.make_plan(cfg, checked.device, checked.gpus, lengths, checked.processes, checked.shape)
    predicted.update(facts(plan))
    predicted.update(facts(checked, "worst_case_"))
    if not plan.fits:
        verdict(plan, enabled, notes)
    if plan.device.is_gpu:
        return "fast"
    heap = "compact" if tight_ram(plan) else "fast"
    predicted["cpu_heap"] = heap
    if heap == "compact":
        notes.append(
            f"RAM is tight for the fast heap (up to {plan.fast_heap_worst_gib:.1f} GiB of "
            f"{plan.device.memory_gib / plan.processes:.1f} GiB): freed tensors go back to the OS at once "
            f"(compact heap), so RSS follows the prediction ({plan.peak_gib:.1f} GiB); steps are slower"
        )
    return heap


def verdict(plan, refuse: bool, notes: list[str]) -> None:
    """A plan that does not fit: one line and exit 2 (UserError) when the check is on, else a note."""
    if refuse:
        raise UserError(report.refusal(plan))
    notes.append(report.refusal(plan).replace("; --no-fit-check runs anyway", ""))


def facts(plan, prefix: str = "") -> dict:
    """all_results.json's prediction, in the measure the run reports beside it: the allocator's on a GPU
    (torch.cuda.max_memory_allocated), process RSS on a CPU."""
    if plan.device.is_gpu:
        return {f"predicted_{prefix}peak_gpu_memory_mb": round(plan.allocated_gib * 1024, 1)}
    return {f"predicted_{prefix}peak_cpu_memory_mb": round(plan.peak_gib * 1024, 1)}


def tight_ram(plan) -> bool:
    """Would the fast heap's slack (model.compute.cpu_heap) risk the machine's RAM? Its peak RSS was measured
    at up to devices.CPU_FAST_HEAP_FACTOR x the plan's tensors (beyond the runtime); the plan made the same
    judgement when it chose its heap (plan.estimate)."""
    return plan.cpu_heap == "compact"
