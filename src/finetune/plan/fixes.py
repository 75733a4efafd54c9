"""What to change when a run does not fit, in the config's own keys, smallest change first.

Each candidate is the config with a few keys changed, estimated again; those that fit are listed in the order
below (how little each changes the run: checkpointing costs ~30% speed and nothing else; a smaller
micro-batch keeps the effective batch through gradient accumulation; Liger swaps the loss kernel; 4-bit
changes the base's precision; more GPUs change the bill).
"""

from __future__ import annotations

import functools

from finetune.config import Config
from finetune.plan.devices import Device
from finetune.plan.estimate import Plan, estimate
from finetune.plan.shapes import Shape


def _micro_batch_fix(cfg: Config, device: Device, gpus: int, shape: Shape, micro: int, estimate=estimate):
    accum = cfg.gradient_accumulation_steps
    size = micro // 2
    while size >= 1:
        factor = micro // size
        changed = cfg.model_copy(
            update={"micro_batch_size": size, "gradient_accumulation_steps": accum * factor}
        )
        if estimate(changed, device, gpus, shape).fits:
            return (
                f"micro_batch_size: {micro} -> {size}, gradient_accumulation_steps: {accum} -> {accum * factor}",
                changed,
            )
        size //= 2
    return None


def candidates(cfg: Config, device: Device, gpus: int, shape: Shape, micro: int, estimate=estimate):
    """(description, changed config, gpus) in the order of how little they change."""
    base = cfg.model_copy(update={"micro_batch_size": micro})
    if not cfg.gradient_checkpointing:
        yield "gradient_checkpointing: true", base.model_copy(update={"gradient_checkpointing": True}), gpus
    if micro > 1:
        found = _micro_batch_fix(base, device, gpus, shape, micro, estimate)
        if found:
            yield found[0], found[1], gpus
    if device.is_gpu and not (cfg.liger_fused_linear_cross_entropy or cfg.cut_cross_entropy_on):
        update = {"liger_fused_linear_cross_entropy": True}
        yield "liger_fused_linear_cross_entropy: true", base.model_copy(update=update), gpus
    full = cfg.adapter is None  # full fine-tuning: a 4-bit base could not train; 8-bit optimizer states can
    if full and not cfg.optimizer.endswith("8bit"):
        yield "optimizer: adamw_bnb_8bit", base.model_copy(update={"optimizer": "adamw_bnb_8bit"}), gpus
    if not (full or cfg.quantized_4bit or cfg.load_in_8bit):
        yield "load_in_4bit: true", base.model_copy(update={"load_in_4bit": True}), gpus
    if device.is_gpu:
        for more in (2 * gpus, 4 * gpus, 8 * gpus):
            zero3 = base.model_copy(update={"deepspeed": {"zero_optimization": {"stage": 3}}})
            yield (
                f"{more} GPUs with deepspeed: deepspeed_configs/zero3.json (--num-processes {more})",
                zero3,
                more,
            )


def fixes(cfg: Config, plan: Plan, shape: Shape, limit: int = 3) -> list[str]:
    """Up to `limit` single changes that make the run fit, each with its predicted peak; if none alone does,
    checkpointing together with the smallest micro-batch (and 4-bit) as one combined change."""
    found = []
    again = _again(plan)
    for text, changed, gpus in candidates(cfg, plan.device, plan.gpus, shape, plan.micro_batch, again):
        after = again(changed, plan.device, gpus, shape)
        if after.fits:
            found.append(f"{text} (predicted peak {after.peak_gib:.1f} GiB)")
            if text.endswith(")") and "GPUs" in text:
                break  # the fewest GPUs that fit is enough
        if len(found) >= limit:
            break
    if found:
        return found
    return [_combined(cfg, plan, shape)]


def _again(plan: Plan):
    """`estimate` for a changed config with what sized `plan`: the data's lengths and the processes."""
    return functools.partial(estimate, lengths=plan.lengths, processes=plan.processes)


def _combined(cfg: Config, plan: Plan, shape: Shape) -> str:
    """No single change fits: checkpointing, then the largest micro-batch that fits, adding Liger's loss and
    4-bit only when still needed."""
    micro, accum = plan.micro_batch, cfg.gradient_accumulation_steps
    steps: list[tuple[str, dict]] = []
    if not cfg.gradient_checkpointing:
        steps.append(("gradient_checkpointing: true", {"gradient_checkpointing": True}))
    if plan.device.is_gpu and not (cfg.liger_fused_linear_cross_entropy or cfg.cut_cross_entropy_on):
        steps.append(("liger_fused_linear_cross_entropy: true", {"liger_fused_linear_cross_entropy": True}))
    if not (cfg.adapter is None or cfg.quantized_4bit or cfg.load_in_8bit):
        steps.append(("load_in_4bit: true", {"load_in_4bit": True}))
    keys, update = [], {}
    after = plan
    for text, change in [("", {}), *steps]:
        if text:
            keys.append(text)
            update.update(change)
        size = micro
        while size >= 1:
            trial = cfg.model_copy(update={**update, "micro_batch_size": size,
                                           "gradient_accumulation_steps": accum * (micro // size)})  # fmt: skip
            after = _again(plan)(trial, plan.device, plan.gpus, shape)
            if after.fits:
                if size != micro:
                    keys.append(f"micro_batch_size: {micro} -> {size}, gradient_accumulation_steps: "
                                f"{accum} -> {accum * (micro // size)}")  # fmt: skip
                return f"{', '.join(keys)} (predicted peak {after.peak_gib:.1f} GiB)"
            size //= 2
    return (
        f"{', '.join(keys) or 'micro_batch_size: 1'} still leaves a predicted peak of {after.peak_gib:.1f} GiB: "
        "a shorter sequence_len, more GPUs or a larger device"
    )
