"""Multi-process launch: `finetune train --num-processes N` re-runs itself under torch.distributed.run.

We never build our own process group logic: torchrun sets RANK/WORLD_SIZE/MASTER_ADDR and the HF Trainer
(with DeepSpeed when configured) does the rest. The same command works unchanged under `torchrun`,
`accelerate launch` and the `deepspeed` launcher.
"""

from __future__ import annotations

import subprocess
import sys

LAUNCH_FLAGS = ("--num-processes", "--nnodes", "--node-rank", "--master-addr", "--master-port")


def strip_launch_flags(argv: list[str]) -> list[str]:
    """The child processes get the same command minus the flags that asked for the launch."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in LAUNCH_FLAGS:
            skip = True
            continue
        if arg.startswith(tuple(f"{flag}=" for flag in LAUNCH_FLAGS)):
            continue
        out.append(arg)
    return out


def torchrun_command(argv: list[str], num_processes: int, nnodes: int, node_rank: int, master_addr: str, master_port: int) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run",
        f"--nproc_per_node={num_processes}", f"--nnodes={nnodes}", f"--node_rank={node_rank}",
        f"--master_addr={master_addr}", f"--master_port={master_port}",
        "-m", "finetune.cli", *strip_launch_flags(argv),
    ]  # fmt: skip


def relaunch(argv: list[str], **how) -> int:
    """Run `finetune <argv>` in `num_processes` processes on this node; return the launcher's exit code."""
    command = torchrun_command(argv, **how)
    print("launching: " + " ".join(command[1:]), file=sys.stderr)
    return subprocess.run(command).returncode
