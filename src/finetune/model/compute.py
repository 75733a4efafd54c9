"""What a run computes in and with: mixed precision, the dtype the base is held in, the attention kernel, and
how many CPU threads a small model trains on. Decided before any weight is read."""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import os
import sys
from dataclasses import dataclass

from finetune.config import Config
from finetune.errors import UserError

SMALL_HIDDEN = 512  # below this hidden size, one CPU thread trains faster than several (see cpu_threads)


@dataclass(frozen=True)
class Precision:
    """What the run computes in: mixed-precision flags for the Trainer and the dtype the base is held in."""

    bf16: bool
    fp16: bool
    tf32: bool | None
    dtype: str  # "bfloat16" | "float16" | "float32": 4-bit compute dtype and the dtype of a 16/32-bit base

    @property
    def torch_dtype(self):
        import torch

        return getattr(torch, self.dtype)


def _accelerator_bf16() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def precision(cfg: Config) -> Precision:
    """`bf16: auto` means bf16 where a GPU supports it; on CPU the run stays in fp32 (exact, and not slower).

    axolotl's `bfloat16` / `float16` hold the base in that dtype without mixed precision
    (config/cross_checks.py keeps them from contradicting bf16/fp16).
    """
    import torch

    on_gpu = torch.cuda.is_available()
    if cfg.bf16 is True:
        bf16 = True
    elif cfg.bf16 == "auto":
        bf16 = _accelerator_bf16() and not (cfg.fp16 or cfg.float16)
    else:
        bf16 = False
    fp16 = bool(cfg.fp16) and not bf16
    if fp16 and not on_gpu:
        raise UserError("fp16: fp16 mixed precision needs a GPU (set fp16: false, or bf16: auto)")
    if bf16 or cfg.bfloat16:
        dtype = "bfloat16"
    else:
        dtype = "float16" if fp16 or cfg.float16 else "float32"
    # TF32 is an Ampere+ GPU feature; the Trainer raises on any other device, so it is dropped there.
    tf32 = cfg.tf32 if on_gpu and torch.cuda.get_device_capability()[0] >= 8 else None
    return Precision(bf16=bf16, fp16=fp16, tf32=tf32, dtype=dtype)


def attn_implementation(cfg: Config, notes: list[str]) -> str:
    """sdpa by default; flash_attention_2 only where it can run (CUDA + the flash_attn package)."""
    import torch

    wanted = cfg.requested_attention
    if cfg.xformers_attention and not cfg.attn_implementation:
        notes.append(
            "xformers_attention: transformers has no xformers kernel; sdpa computes the same attention "
            "(with its memory-efficient kernel on a GPU)"
        )
    if wanted.startswith("flash_attention") and not (
        torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None
    ):
        notes.append(f"attention: {wanted} needs a CUDA GPU and the flash_attn package; using sdpa instead")
        return "sdpa"
    return wanted


def cpu_threads(model, notes: list[str]) -> None:
    """Train a narrow model on one CPU thread, unless OMP_NUM_THREADS says otherwise.

    Each op of a model this small is microseconds of work, so thread hand-offs dominate; and on a busy
    machine a descheduled thread stalls every op by a scheduler tick. Measured on 2 shared cores, the
    quickstart (hidden size 64) trained in 30 s on 2 threads and 1.7 s on 1.
    """
    import torch

    hidden = getattr(model.config, "hidden_size", None)
    if torch.cuda.is_available() or "OMP_NUM_THREADS" in os.environ or not hidden or hidden >= SMALL_HIDDEN:
        return
    if torch.get_num_threads() > 1:
        torch.set_num_threads(1)
        notes.append(
            f"cpu: hidden size {hidden} is tiny, so one thread is used (faster; OMP_NUM_THREADS overrides)"
        )


MMAP_THRESHOLD = (
    32 << 20
)  # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit: blocks below it come from the heap
COMPACT_MMAP_THRESHOLD = 1 << 20  # compact heap: tensors of 1 MiB or more get their own mmap
DEFAULT_TRIM_THRESHOLD = 128 << 10  # glibc's
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # malloc.h


def cpu_heap(compact: bool = False) -> bool:
    """On a CPU run (Linux, glibc), how freed tensors' memory is kept; True when set.

    Fast (the default): tensors under 32 MiB come from the heap, which never shrinks. A training step frees and
    re-allocates the same activations every step; glibc raises its mmap threshold only to the largest block
    freed so far, so activations above it get a fresh mmap (fresh, zeroed, faulted-in pages) each step, and it
    gives the heap's top back to the OS whenever 2x that threshold is free, so the next step faults those
    pages in again. Fixing the threshold at its ceiling and turning trimming off (mallopt, glibc's public
    knobs; -1 = never trim, per mallopt(3)) keeps the pages: measured on SmolLM2-135M (2 cores), page faults
    5.1-5.8M -> 3.7M in 12 steps and the loop 3-7% faster, at the same peak RSS (BENCHMARKS.md, "Wall time").
    The price: a heap that a step fragments holds more than the live tensors (measured up to 2.1x the plan).

    Compact (when the fit check finds RAM tight): every tensor of 1 MiB or more gets its own mmap, returned
    when freed, so RSS follows the live tensors and `finetune plan`'s CPU peak holds (within 15% on its grid);
    steps are slower (every activation's pages fault in afresh: 60% on SmolLM2).
    MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ in the environment win.
    """
    if not sys.platform.startswith("linux") or _cuda_visible():
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt
        return False
    done = True
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        done &= bool(mallopt(M_MMAP_THRESHOLD, COMPACT_MMAP_THRESHOLD if compact else MMAP_THRESHOLD))
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ:  # compact: glibc's default (a process may train twice)
        done &= bool(mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD if compact else -1))
    return done


def _cuda_visible() -> bool:
    import torch

    return torch.cuda.is_available()
