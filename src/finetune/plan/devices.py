"""The devices a plan can be made for: memory, peak dense bf16 matmul rate, and the fitted constants.

Every constant says where it came from: FITTED (a measurement on this project's benchmarks, named), DATA SHEET
(the vendor's published figure) or ASSUMED (no measurement yet: a plan that uses one says so in its notes,
`ASSUMED_NOTE`).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass

GIB = 2**30


@dataclass(frozen=True)
class Device:
    name: str
    memory_gib: float  # what the device offers a process (nvidia-smi's total, or the machine's RAM)
    peak_tflops: float  # dense bf16 (GPU, fp32 accumulate) or fp32 FMA rate of the threads used (CPU)
    is_gpu: bool
    note: str = ""  # what the plan should say about this device's figures (an unknown GPU's borrowed rate)


# name: (total memory in GiB, dense bf16 TFLOP/s with fp32 accumulation).
#   TFLOP/s — DATA SHEET: NVIDIA's dense (not 2:4 sparse) bf16 tensor-core figures: H100 SXM and H200 (Hopper
#   data sheets), A100 (A100 data sheet), L40S, L4 and A10G (their product briefs), RTX 4090 and 3090 (the Ada
#   and Ampere GeForce white papers, fp32 accumulate).
#   Memory — DATA SHEET converted: the marketed size in GiB less the ~0.5% nvidia-smi shows as reserved (an
#   H100 80GB HBM3 lists 81,559 MiB = 79.6 GiB in public nvidia-smi output; not measured on a lent machine
#   here). Only `--device NAME` uses it: detect() and train's fit check take the size the device reports.
GPUS = {
    "h100-80gb": (79.6, 989.0),
    "h200": (139.8, 989.0),
    "a100-80gb": (79.2, 312.0),
    "a100-40gb": (39.4, 312.0),
    "l40s": (44.4, 362.0),
    "l4": (22.0, 121.0),
    "a10g": (22.0, 70.0),
    "rtx4090": (23.6, 165.0),
    "rtx3090": (23.6, 71.0),
}
DEVICE_NAMES = [*GPUS, "cpu"]

# --- GPU: what torch.cuda.max_memory_allocated does not see
# ASSUMED: CUDA context + cuBLAS workspace of one process, the figure commonly seen with CUDA 12 (not measured
#   here: BENCHMARKS.md records torch.cuda.max_memory_allocated only)
CUDA_CONTEXT_GIB = 0.5
# ASSUMED: reserved but unallocated memory (fragmentation) as a share of the allocated peak — not fitted, no GPU
#   was lent while this was written. A GPU plan says so in its notes (ASSUMED_NOTE).
GPU_ALLOCATOR_SLACK = 0.05
ASSUMED_NOTE = (
    "GPU: the CUDA context (0.5 GiB) and the allocator slack (5% of the allocated peak) are assumptions, not "
    "measured (plan/devices.py); the allocated peak was measured on an H100 (BENCHMARKS.md)"
)
# FITTED: share of the dense bf16 peak a LoRA step reaches (model FLOPs incl. recomputation / time), from the
#   H100 rows of BENCHMARKS.md (benchmarks/gpu_qlora.py, 2026-11-23): 8B bf16 LoRA 27.6% of the no-recompute
#   MFU, 8B QLoRA 20.8% (no checkpointing) and 22.5% with recomputation counted; the 4-bit dequantization costs
#   the QLoRA runs their own factor. The 1B runs (5.7% / 10.9%) are dominated by the 128k-vocab loss and are
#   predicted ~2-3x too fast by this (see BENCHMARKS.md, "Planning accuracy").
#   8-bit: ASSUMED (no 8-bit GPU run was measured: below the 4-bit figure, as LLM.int8's matmul is slower than
#   bf16); a plan that uses it says so (ASSUMED_8BIT_NOTE).
GPU_EFFICIENCY = {16: 0.276, 4: 0.215, 8: 0.15}
ASSUMED_8BIT_NOTE = "GPU speed: the 8-bit efficiency (15% of peak) is an assumption, not measured"

# --- CPU: process RSS beyond the tensors
# FITTED by `benchmarks/plan_accuracy.py --report` (least squares RSS = runtime + (1 + slack) x tensors) over its
#   14 configs on the 2-core Xeon, 2026-12-03, with the compact heap (model.compute.cpu_heap); a quiet rerun the
#   same day refitted 0.589 / 0.055 (BENCHMARKS.md "Planning accuracy").
CPU_RUNTIME_GIB = 0.584  # python + torch + transformers + datasets + the tokenizer, resident before training
CPU_ALLOCATOR_SLACK = 0.061  # RSS above the live tensors, as a share of them (compact heap: 1 MiB threshold)
# FITTED bound: with finetune's fast heap (model.compute.cpu_heap), peak RSS less the runtime was up to 3.21x
#   the plan's tensors on the same grid (small-b8-s1024-gc; 1.0-1.8x for most); a run whose runtime + this x
#   tensors exceeds RAM gets the compact heap (train/fit_check.tight_ram)
CPU_FAST_HEAP_FACTOR = 3.3
# FITTED by `benchmarks/plan_accuracy.py --report` over its 14 configs (2-core Xeon, 2026-12-03): what the fast
#   heap holds beyond the compact heap's peak is freed activation memory it keeps, fragmented; it grows with what a
#   step writes and frees (the activations and logits, x4/3 recomputed with checkpointing). The share is not one
#   number: 0.38-0.45 GiB a GiB for SmolLM2's configs, 0.55-0.64 for the 6-layer `small` model's (the first
#   step's holes are too small for its largest heap-served tensors; BENCHMARKS.md "Planning accuracy"). Least
#   squares gives 0.43, which under-predicts the `small` family by up to 12%; an under-prediction ends in an
#   out-of-memory kill, an over-prediction costs a smaller batch, so the constant is the largest share that keeps
#   every grid config within the 15% target (0.555, taken as 0.55): it errs high on SmolLM2 (up to +15%).
CPU_FAST_HEAP_KEPT = 0.55
# FITTED (speed) by `benchmarks/plan_accuracy.py --report` (least squares on the step time's relative error)
#   over the 13 grid configs with a plain-model base, on the 2-core Xeon, 2026-12-03, quiet (load < 2), with
#   finetune's own allocator settings: step = FLOPs / (efficiency x peak) + traffic x seconds/GiB + layers x
#   seconds/layer (plan/speed.cpu_step). Worst error 16% (BENCHMARKS.md "Planning accuracy").
CPU_EFFICIENCY = 0.79  # share of the nominal fp32 FMA peak of the threads used (matmul-bound part)
CPU_TRAFFIC_SECONDS_PER_GIB = 0.66  # element-wise work per GiB of activations + logits a step writes
CPU_LAYER_SECONDS = 0.0033  # fixed cost of a decoder layer per step, forward + backward (op dispatch)
CPU_FIT_THREADS = 2  # the traffic constant was measured with this many threads (the 2-core Xeon above)
# DATA SHEET: fp32 FLOP per cycle and core — two FMA units x 16 (AVX-512) or 8 (AVX2) lanes x 2 (Intel's
#   optimization manual); 8 without either (SSE, two units x 4 lanes)
FLOP_PER_CYCLE = {"avx512f": 64, "avx2": 32, None: 8}
# ASSUMED: the clock when /proc/cpuinfo gives none (not Linux); only the CPU speed estimate uses it, and a plan
#   that does says so (the device's note)
CPU_GHZ_UNKNOWN = 2.0


def cpu_device(memory_gib: float | None = None, threads: int | None = None) -> Device:
    """This machine's RAM and the nominal fp32 rate of `threads` cores (AVX-512: 64 FLOP/cycle, AVX2: 32)."""
    info = _read("/proc/cpuinfo")
    mhz = re.search(r"cpu MHz\s*:\s*([\d.]+)", info)
    ghz = float(mhz.group(1)) / 1000 if mhz else CPU_GHZ_UNKNOWN
    note = "" if mhz else f"CPU: the clock is not in /proc/cpuinfo; speed assumes {CPU_GHZ_UNKNOWN} GHz"
    per_cycle = next(n for flag, n in FLOP_PER_CYCLE.items() if flag is None or flag in info)
    threads = threads or os.cpu_count() or 1
    return Device("cpu", memory_gib or _ram_gib(), threads * ghz * per_cycle / 1000, False, note)


def gpu_device(name: str, memory_gib: float | None = None) -> Device:
    memory, tflops = GPUS[name]
    return Device(name, memory_gib or memory, tflops, True)


def detect() -> Device:
    """The first GPU nvidia-smi lists (no torch import), else this machine's CPU."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run(
                [smi, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                capture_output=True, text=True, timeout=5, check=True,
            ).stdout.splitlines()  # fmt: skip
        except (OSError, subprocess.SubprocessError):
            out = []
        if out:
            name, mib = (part.strip() for part in out[0].split(",")[:2])
            return from_name(name, float(mib) / 1024)
    return cpu_device()


def from_name(gpu_name: str, memory_gib: float) -> Device:
    """A GPU as CUDA names it ("NVIDIA H100 80GB HBM3") matched to the table; an unknown one is planned with
    H100's rate (speed only: its memory is its own), and its plan says so."""
    key = gpu_name.lower().replace(" ", "")
    for name in GPUS:
        if name.split("-")[0] in key and (name.count("-") == 0 or name.split("-")[1] in key):
            return Device(name, memory_gib, GPUS[name][1], True)
    for name in GPUS:
        if name.split("-")[0] in key:
            return Device(name, memory_gib, GPUS[name][1], True)
    note = (
        f"GPU {gpu_name!r} is not in plan/devices.py's table: its memory ({memory_gib:.1f} GiB) is its own, "
        f"but speed is planned with H100's {GPUS['h100-80gb'][1]:.0f} TFLOP/s and efficiency (unmeasured here)"
    )
    return Device(gpu_name, memory_gib, GPUS["h100-80gb"][1], True, note)


def _ram_gib() -> float:
    found = re.search(r"MemTotal:\s*(\d+) kB", _read("/proc/meminfo"))
    if found:
        return int(found.group(1)) / 2**20
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""
