"""Where a CPU run's peak RSS goes: `finetune train` in this process, with glibc's heap sampled as it trains.

    python benchmarks/heap_probe.py OUT.json train CONFIG.yaml --overwrite --no-fit-check

Runs the CLI as `finetune train` would (its fast heap included) while a thread reads, every 20 ms, VmRSS and
glibc's mallinfo2: the heap's size (`arena`: what the heap took from the OS and, never trimmed, keeps), the bytes
in use and the bytes free inside it. Each sample is tagged with the training step (and its batch's shape). At exit
it prints, per step, the largest of each: a heap far larger than its bytes in use is fragmentation (freed holes
too small for the next large tensor), not live tensors. OUT.json keeps every sample. This is how the fast heap's
part of the plan (`fast_heap_kept`) was examined (BENCHMARKS.md, "Planning accuracy"). Linux with glibc 2.33+.
"""

from __future__ import annotations

import atexit
import ctypes
import json
import runpy
import sys
import threading
import time

FIELDS = (
    "arena",
    "ordblks",
    "smblks",
    "hblks",
    "hblkhd",
    "usmblks",
    "fsmblks",
    "uordblks",
    "fordblks",
    "keepcost",
)


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in FIELDS]


def main() -> None:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    samples: list[tuple] = []
    phase = {"now": "loading"}

    def rss_gib() -> float:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 2**20

    def sample() -> None:
        while True:
            m = libc.mallinfo2()
            samples.append((time.time(), phase["now"], rss_gib(), m.arena / 2**30, m.uordblks / 2**30,
                            m.fordblks / 2**30, m.hblkhd / 2**30))  # fmt: skip
            time.sleep(0.02)

    import transformers

    step = transformers.Trainer.training_step

    def tagged(self, model, inputs, *args, **kwargs):
        phase["now"] = f"step {self.state.global_step} {tuple(inputs['input_ids'].shape)}"
        try:
            return step(self, model, inputs, *args, **kwargs)
        finally:
            phase["now"] = f"after step {self.state.global_step}"

    transformers.Trainer.training_step = tagged
    out = sys.argv.pop(1)

    def report() -> None:  # the CLI ends with os._exit after the exit handlers: this is one of them
        with open(out, "w") as f:
            json.dump(samples, f)
        peaks: dict[str, list[float]] = {}
        for _, name, *values in samples:
            peaks[name] = [max(a, b) for a, b in zip(peaks.get(name, values), values, strict=True)]
        print(
            "phase | RSS | heap (arena) | in use | free in heap | mmapped  (largest of each, GiB)",
            file=sys.stderr,
        )
        for name, values in peaks.items():
            print(name, "|", " | ".join(f"{v:.3f}" for v in values), file=sys.stderr)

    atexit.register(report)
    threading.Thread(target=sample, daemon=True).start()
    sys.argv[0] = "finetune"
    runpy.run_module("finetune.cli", run_name="__main__")


if __name__ == "__main__":
    main()
