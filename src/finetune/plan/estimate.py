"""One plan: memory by part against the device, speed, the run's length — plain numbers, no torch."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from finetune.config import Config
from finetune.plan import devices, memory, setting, speed
from finetune.plan.devices import GIB, Device
from finetune.plan.shapes import Shape, shape_of

AUTO_LARGEST = 128  # micro_batch_size: auto tries 1, 2, 4, ... up to this


@dataclass
class Plan:
    base_model: str
    device: Device
    gpus: int
    micro_batch: int
    parts: dict[str, float]  # GiB per device, summing to peak
    moments: dict[str, float]  # GiB of the two candidate peak moments (only the larger is in parts)
    allocated_gib: float  # what torch.cuda.max_memory_allocated would report (GPU); the tensors (CPU)
    peak_gib: float
    params: dict[str, int]
    speed: dict
    notes: list[str] = field(default_factory=list)
    fixes: list[str] = field(default_factory=list)
    shape: Shape | None = None  # what it was computed from: a re-plan of the same base need not read it again
    processes: int = 1  # CPU: processes sharing the machine's RAM (--num-processes), each holding this peak
    batch: tuple[float, int] | None = None  # the data's largest micro-batch (rows, T); None: the worst case
    lengths: dict | None = None  # what batch came from (data.length_stats): fixes re-plan with it
    worst_case_peak_gib: float | None = (
        None  # every row at sequence_len (make_plan fills it beside the data's)
    )

    @property
    def fits(self) -> bool:
        return self.peak_gib * self.processes <= self.device.memory_gib

    @property
    def compact_peak_gib(self) -> float:
        """CPU: the peak with the compact heap (RSS follows the live tensors)."""
        return self.peak_gib - self.parts.get("fast_heap_kept", 0.0)

    @property
    def cpu_heap(self) -> str | None:
        """CPU: the heap `finetune train` keeps for this plan (model.compute.cpu_heap); None on a GPU."""
        if self.device.is_gpu:
            return None
        return "fast" if "fast_heap_kept" in self.parts else "compact"

    @property
    def fast_heap_worst_gib(self) -> float:
        """CPU: the most `finetune train`'s fast heap was measured to hold for this plan's tensors."""
        runtime = self.parts.get("runtime", 0.0)
        return runtime + (self.compact_peak_gib - runtime) * devices.CPU_FAST_HEAP_FACTOR

    @property
    def margin_gib(self) -> float:
        return self.device.memory_gib - self.peak_gib * self.processes

    def as_json(self) -> dict:
        r = lambda x: round(x, 3)  # noqa: E731
        return {
            "base_model": self.base_model,
            "device": self.device.name,
            "num_gpus": self.gpus if self.device.is_gpu else 0,
            "micro_batch_size": self.micro_batch,
            "peak_memory_gib": r(self.peak_gib),
            "worst_case_peak_memory_gib": r(self.worst_case_peak_gib or self.peak_gib),
            "sized_for": self.sized_for,
            "allocated_peak_gib": r(self.allocated_gib),
            "device_memory_gib": r(self.device.memory_gib),
            "margin_gib": r(self.margin_gib),
            "fits": self.fits,
            **(
                {}
                if self.device.is_gpu
                else {
                    "processes": self.processes,
                    "cpu_heap": self.cpu_heap,
                    "compact_peak_gib": r(self.compact_peak_gib),
                    "fast_heap_worst_gib": r(self.fast_heap_worst_gib),
                }
            ),
            "parts": {k: r(v) for k, v in self.parts.items()},
            "moments": {k: r(v) for k, v in self.moments.items()},
            "params": self.params,
            "tokens_per_second": round(self.speed["tokens_per_second"], 1),
            "speed": self.speed,
            "fixes": self.fixes,
            "notes": self.notes,
        }

    @property
    def sized_for(self) -> str:
        """What the peak is the peak of: the data's largest micro-batch, or every row at sequence_len."""
        if self.batch is None:
            return "the worst case: every row at sequence_len"
        rows, length = self.batch
        # a budget's worth of the longest rows need not be a whole number of them
        rows_text = f"{rows:,}" if float(rows).is_integer() else f"{rows:,.1f}"
        return f"this data's largest micro-batch: {rows_text} rows x {length:,} tokens"


def estimate(cfg: Config, device: Device, gpus: int = 1, shape: Shape | None = None,
             micro_batch: int | None = None, lengths: dict | None = None,
             processes: int | None = None) -> Plan:  # fmt: skip
    """The plan for `cfg` on `device` (gpus of it); micro_batch overrides the config's (auto included).
    `lengths` (data.length_stats: rows, tokens, longest): size the peak for this data's largest micro-batch,
    not every row at sequence_len. `processes`: on a CPU, how many share its RAM (default `gpus`)."""
    if shape is None:
        shape = shape_of(cfg)
    if micro_batch is None:
        micro_batch = (
            cfg.micro_batch_size
            if cfg.micro_batch_size != "auto"
            else auto_micro_batch(cfg, device, gpus, shape, lengths, processes)
        )
    processes = 1 if device.is_gpu else max(1, processes or gpus)
    s = setting.setting(cfg, device.is_gpu, micro_batch, gpus, shape.saved_bits, lengths)
    full = cfg.adapter is None  # full fine-tuning: every weight has a gradient and optimizer states
    n_lora = 0 if full else setting.adapter_params(cfg, shape)
    n_full = shape.total_params if full else setting.trained_in_full(cfg, shape)
    shard = lambda stage: s.gpus if s.zero >= stage else 1  # noqa: E731 - ZeRO stage >= n shards this part
    fixed = {
        "base_weights": setting.weight_bytes(shape, s) / shard(3),
        "adapter": 4 * n_lora / shard(3),  # peft keeps the adapter in fp32 (autocast_adapter_dtype)
        "adapter_gradients": 4 * n_lora / shard(2),
        "optimizer_states": s.optimizer_bytes * (n_lora + n_full) / shard(1),
        "modules_to_save": 0 if full else 8 * n_full,  # an fp32 trainable copy and its gradient
    }
    if full:  # the weights' gradients, in their dtype (unfrozen_parameters counted as all: an upper bound)
        fixed = {k: v for k, v in fixed.items() if not k.startswith(("adapter", "modules_to_save"))}
        fixed["weight_gradients"] = setting.weight_bytes(shape, s) / shard(2)
    acts = memory.activation_parts(cfg, shape, s)
    moment = "logits_and_loss" if acts["logits_and_loss"] >= acts["layer_backward"] else "layer_backward"
    training = {**fixed, "activations": acts["activations"], moment: acts[moment]}
    loading = loading_bytes(cfg, shape, s)
    allocated = max(sum(training.values()), loading)
    parts = {k: v / GIB for k, v in training.items()}
    notes = []
    if loading > sum(training.values()):
        notes.append(f"the peak is while loading the base ({loading / GIB:.2f} GiB), not while training")
        parts = {"loading_base": loading / GIB}
    if device.is_gpu:
        parts["cuda_context"] = devices.CUDA_CONTEXT_GIB
        parts["allocator_slack"] = devices.GPU_ALLOCATOR_SLACK * allocated / GIB
        notes.append(devices.ASSUMED_NOTE)
        if s.bits == 8:
            notes.append(devices.ASSUMED_8BIT_NOTE)
    else:
        if s.kbit and not cfg.base_is_gguf and not shape.saved_bits:
            # quantized from a checkpoint read through mmap: its pages stay mapped, and resident, in the process
            parts["checkpoint_pages"] = shape.linear_params * shape.checkpoint_bytes / GIB
        parts["runtime"] = devices.CPU_RUNTIME_GIB
        parts["allocator_slack"] = devices.CPU_ALLOCATOR_SLACK * allocated / GIB
    if cfg.peft_use_dora:
        notes.append("DoRA: its weight-norm activations are not modelled; expect more than this")
    plan = Plan(
        base_model=cfg.base_model,
        device=device,
        gpus=s.gpus,
        micro_batch=micro_batch,
        parts=parts,
        moments={k: acts[k] / GIB for k in ("logits_and_loss", "layer_backward")},
        allocated_gib=allocated / GIB,
        peak_gib=sum(parts.values()),
        params={"total": shape.total_params, "trainable": n_lora + n_full, "shapes_from": shape.source},
        speed=speed.speed(cfg, shape, s, device, n_lora),
        notes=([device.note] if device.note else []) + notes + shape.notes,
        shape=shape,
        processes=processes,
        batch=s.batch,
        lengths=lengths,
    )
    if processes > 1:
        plan.notes.append(
            f"CPU: {processes} processes share {device.memory_gib:.1f} GiB of RAM, each with its own copy of "
            f"the model and its own activations: {processes} x the peak must fit"
        )
    if not device.is_gpu:
        worst = plan.fast_heap_worst_gib
        if worst * processes <= device.memory_gib:  # train's fast heap (fit_check.tight_ram: the same test)
            kept = devices.CPU_FAST_HEAP_KEPT * memory.step_traffic_bytes(cfg, shape, s) / GIB
            plan.parts["fast_heap_kept"] = kept
            plan.peak_gib += kept
        heap = plan.cpu_heap
        plan.notes.append(
            f"CPU: the {heap} heap (`finetune train`'s faster heap keeps freed activations for reuse, and can "
            f"hold up to {worst:.1f} GiB; it keeps the heap compact, {plan.compact_peak_gib:.1f} GiB, when that "
            "exceeds RAM)"
        )
    return plan


def loading_bytes(cfg: Config, shape: Shape, s: setting.Setting) -> float:
    """A GGUF base is dequantized to fp32 and then rebuilt as a plain model: two copies for a moment."""
    weights = setting.weight_bytes(shape, s)
    if cfg.base_is_gguf:
        return weights + shape.total_params * 4
    return weights


def auto_micro_batch(cfg: Config, device: Device, gpus: int, shape: Shape, lengths: dict | None = None,
                     processes: int | None = None) -> int:  # fmt: skip
    """The largest power of two up to AUTO_LARGEST whose step fits (1 when none does: the check says so)."""
    best = 1
    for exponent in range(int(math.log2(AUTO_LARGEST)) + 1):
        size = 2**exponent
        if not estimate(cfg, device, gpus, shape, size, lengths, processes).fits:
            break
        best = size
    return best
