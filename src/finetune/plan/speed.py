"""Speed: model FLOPs per token of a LoRA step, tokens/s from the device's fitted efficiency, and the run's
length from a quick look at the dataset files (no tokenizer: ~4 characters a token)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from finetune import data
from finetune.config import Config
from finetune.plan import devices, memory
from finetune.plan.devices import Device
from finetune.plan.setting import Setting
from finetune.plan.shapes import Shape

CHARS_PER_TOKEN = 4.0
SMALL_HIDDEN = 512  # model.compute.SMALL_HIDDEN (plan does not import the model stage)  # English text with a BPE vocabulary; only for the run-length estimate


def flops_per_token(shape: Shape, s: Setting, n_lora: int, full: bool = False) -> float:
    """Forward 2N + backward 2N (input gradients only: the base is frozen) for the base and the head, 6 per
    adapter parameter, causal attention 2·T·q a layer forward (x3 with backward); checkpointing recomputes the
    layers' forward once more. `full` (full fine-tuning, no adapter): every linear weight's gradient is computed
    too, another 2N in the backward (6N in all)."""
    layer_linear = shape.linear_params
    head = shape.vocab * shape.hidden
    attention = 2 * s.length * shape.q_width * shape.layers  # QK^T and AV, causal half, per token
    forward = 2 * (layer_linear + head) + 2 * n_lora + attention
    weight_grads = 2 * (layer_linear + head) if full else 0
    backward = 2 * (layer_linear + head) + weight_grads + 4 * n_lora + 2 * attention
    recompute = 2 * layer_linear + 2 * n_lora + attention if s.checkpointing else 0
    return forward + backward + recompute


def efficiency(device: Device, s: Setting) -> float:
    if not device.is_gpu:
        return devices.CPU_EFFICIENCY
    return devices.GPU_EFFICIENCY.get(s.bits if s.bits in (4, 8) else 16, devices.GPU_EFFICIENCY[16])


def speed(cfg: Config, shape: Shape, s: Setting, device: Device, n_lora: int) -> dict:
    per_token = flops_per_token(shape, s, n_lora, full=cfg.adapter is None)
    if device.is_gpu:
        tps = device.peak_tflops * 1e12 * efficiency(device, s) / per_token * s.gpus
        out = {"flops_per_token": per_token, "tokens_per_second": tps, "efficiency": efficiency(device, s)}
    else:
        out = cpu_step(cfg, shape, s, device, per_token)
    out.update(run_length(cfg, s, out["tokens_per_second"]))
    return out


def cpu_step(cfg: Config, shape: Shape, s: Setting, device: Device, per_token: float) -> dict:
    """A CPU step is not only FLOPs: t = FLOPs / (efficiency x peak) + activation traffic x seconds per GiB
    (the memory-bound element-wise work: norms, activations, softmax over the vocabulary) + a fixed cost per
    layer (op dispatch, which dominates a narrow model). Each term's constant is fitted (devices.py)."""
    cores = os.cpu_count() or 1
    threads = cores
    if shape.hidden < SMALL_HIDDEN and "OMP_NUM_THREADS" not in os.environ:
        threads = 1  # finetune trains a narrow model on one thread (model.compute.cpu_threads)
    peak = device.peak_tflops * threads / cores
    flop_s = s.tokens * per_token / (peak * 1e12 * devices.CPU_EFFICIENCY)
    # element-wise kernels over what the step writes and reads again; fitted at 2 threads
    traffic_gib = memory.step_traffic_bytes(cfg, shape, s) / devices.GIB
    traffic_s = traffic_gib * devices.CPU_TRAFFIC_SECONDS_PER_GIB * devices.CPU_FIT_THREADS / threads
    overhead_s = shape.layers * devices.CPU_LAYER_SECONDS
    step = flop_s + traffic_s + overhead_s
    return {
        "flops_per_token": per_token,
        "tokens_per_second": s.tokens / step,
        "efficiency": devices.CPU_EFFICIENCY,
        "step_seconds": {"flops": round(flop_s, 4), "activation_traffic": round(traffic_s, 4),
                         "per_layer_overhead": round(overhead_s, 4)},
    }  # fmt: skip


def dataset_size(cfg: Config) -> tuple[int, float] | None:
    """(rows, characters) of the local training files; None when one is on the hub or not a file."""
    rows, chars = 0, 0.0
    for ds in cfg.datasets:
        path = Path(ds.path).expanduser()
        if not path.is_file():
            return None
        size = path.stat().st_size
        with path.open("rb") as f:
            lines = sum(1 for line in f if line.strip())
        if path.suffix == ".json" and lines and path.read_text()[:1] == "[":
            lines = len(json.loads(path.read_text()))
        rows += max(0, lines - (1 if path.suffix == ".csv" else 0))
        chars += size
    return rows, chars


def run_length(cfg: Config, s: Setting, tps: float) -> dict:
    """Optimizer steps, tokens and wall time of the whole run: from the prepared data cache when there is one
    (exact rows and tokens), else from the dataset files (rows longer than sequence_len are cut)."""
    per_step_rows = s.micro_batch * cfg.gradient_accumulation_steps * s.gpus
    out: dict = {"optimizer_steps": cfg.max_steps, "tokens": None, "wall_hours": None, "gpu_hours": None}
    stats = data.cached_stats(cfg) if cfg.datasets else None
    if stats and stats.get("train_rows"):
        size, out["counted_from"] = (stats["train_rows"], stats["tokens"] * CHARS_PER_TOKEN), "prepared data"
    else:
        size = dataset_size(cfg)
        out["counted_from"] = "dataset files (~4 characters a token)" if size else None
    if size is None and cfg.max_steps is None:
        return out
    if size is not None:
        rows, chars = size
        row_tokens = min(s.seq, chars / CHARS_PER_TOKEN / max(1, rows))
        if cfg.sample_packing:  # batches filled to micro_batch_size x sequence_len tokens
            per_epoch = math.ceil(rows * row_tokens / (s.tokens * cfg.gradient_accumulation_steps * s.gpus))
        else:
            per_epoch = math.ceil(rows / per_step_rows)
        steps = cfg.max_steps or math.ceil(per_epoch * cfg.num_epochs)
        tokens = min(steps * per_step_rows * row_tokens, rows * row_tokens * cfg.num_epochs)
    else:
        steps, tokens = cfg.max_steps, cfg.max_steps * per_step_rows * s.seq
    hours = tokens / tps / 3600
    out.update(optimizer_steps=steps, tokens=int(tokens), wall_hours=round(hours, 3))
    if s.on_gpu:
        out["gpu_hours"] = round(hours * s.gpus, 3)
    return out
