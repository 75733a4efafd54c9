"""Start-up time of the CLI: `finetune --help` and `finetune validate` (neither may import torch).

    python benchmarks/startup.py [--repeat 10]

Prints the median and best wall time of each command, run as a fresh process each time.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed(command: list[str], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    exe = shutil.which("finetune") or str(Path(sys.executable).parent / "finetune")
    tiny = ROOT / "models" / "tiny"
    if not tiny.exists():
        subprocess.run([exe, "tiny-model", str(tiny)], check=True, capture_output=True)
    commands = {
        "finetune --help": [exe, "--help"],
        "finetune validate examples/quickstart.yaml": [exe, "validate", "examples/quickstart.yaml"],
        "python -c pass (interpreter floor)": [sys.executable, "-c", "pass"],
    }
    print(f"{'command':48s} {'median s':>9s} {'best s':>8s}")
    for name, command in commands.items():
        times = timed(command, args.repeat)
        print(f"{name:48s} {statistics.median(times):9.3f} {min(times):8.3f}")


if __name__ == "__main__":
    main()
