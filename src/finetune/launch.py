"""`finetune train CONFIG --num-processes N [--nnodes M --node-rank R --master-addr A --master-port P]`.

The command replaces itself with torch.distributed.run (torchrun), which starts N copies of the same command
minus these flags; each copy is an ordinary `finetune train` that finds RANK/WORLD_SIZE/MASTER_ADDR in its
environment (distributed.py). We write no process-group logic of our own, so the same command also runs
unchanged under `torchrun`, `accelerate launch` and the `deepspeed` launcher.

    finetune train cfg.yaml --num-processes 4                                   # 4 GPUs, this machine
    finetune train cfg.yaml --num-processes 8 --nnodes 2 --node-rank 0 --master-addr 10.0.0.1   # node 0
    finetune train cfg.yaml --num-processes 8 --nnodes 2 --node-rank 1 --master-addr 10.0.0.1   # node 1
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import sys

from finetune.errors import UserError

LAUNCH_FLAGS = ("--num-processes", "--nnodes", "--node-rank", "--master-addr", "--master-port")
DEFAULT_PORT = 29500  # torchrun's default: every node must agree on the port, so multi-node runs use it
COMMAND_ENV = "FINETUNE_LAUNCH_ARGV"  # the command as typed, launch flags included, for the resume hint


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


def without_local_rank(argv: list[str]) -> list[str]:
    """Drop `--local_rank=N` (the deepspeed launcher puts it before the sub-command; torch.distributed.launch
    used `--local-rank`): every launcher also sets LOCAL_RANK in the environment, which is what we read."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--local_rank", "--local-rank"):
            skip = True
        elif not arg.startswith(("--local_rank=", "--local-rank=")):
            out.append(arg)
    return out


def command_argv() -> list[str]:
    """The `finetune` arguments as the user typed them: a launched process's own lack the launch flags."""
    saved = os.environ.get(COMMAND_ENV)
    return json.loads(saved) if saved else sys.argv[1:]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check(num_processes: int, nnodes: int, node_rank: int) -> None:
    """The flags' mistakes, as one-line errors."""
    if num_processes < 1:
        raise UserError(f"--num-processes: must be >= 1 (got {num_processes})")
    if nnodes < 1:
        raise UserError(f"--nnodes: must be >= 1 (got {nnodes})")
    if not 0 <= node_rank < nnodes:
        raise UserError(f"--node-rank: must be between 0 and --nnodes - 1 = {nnodes - 1} (got {node_rank})")


def wanted(num_processes: int, nnodes: int) -> bool:
    """Whether the flags ask for a launch; one process on one node trains right here (DeepSpeed included)."""
    return num_processes > 1 or nnodes > 1


def torchrun_command(
    argv: list[str],
    num_processes: int,
    nnodes: int,
    node_rank: int,
    master_addr: str,
    master_port: int | None,
) -> list[str]:
    """torch.distributed.run with a static rendezvous at master_addr:master_port, running `finetune <argv>`.

    One node without --master-port gets a free port, so two runs on one machine do not collide.
    """
    if master_port is None:
        master_port = free_port() if nnodes == 1 else DEFAULT_PORT
    return [
        sys.executable, "-m", "torch.distributed.run",
        f"--nproc_per_node={num_processes}", f"--nnodes={nnodes}", f"--node_rank={node_rank}",
        f"--master_addr={master_addr}", f"--master_port={master_port}",
        "-m", "finetune.cli", *strip_launch_flags(argv),
    ]  # fmt: skip


def relaunch(argv: list[str], **how) -> None:
    """Replace this process with torchrun: its exit code, Ctrl-C and SIGTERM handling are the run's own."""
    if "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ:
        raise UserError(
            "--num-processes/--nnodes: this process was already started by a launcher (torchrun, accelerate "
            "launch, deepspeed); drop these flags, the launcher decides the processes"
        )
    command = torchrun_command(argv, **how)
    os.environ[COMMAND_ENV] = json.dumps(argv)  # inherited by every process (checkpoints.resume_command)
    print("launching: " + shlex.join(["python", *command[1:]]), file=sys.stderr, flush=True)
    sys.stdout.flush()
    os.execv(command[0], command)
