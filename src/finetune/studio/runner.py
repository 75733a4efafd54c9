"""The small parent of one Studio job: `python -m finetune.studio.runner JOB.json`.

It runs the job's `finetune` command with its output in the job's log, passes SIGTERM/SIGINT on to it (so stop
is training's own checkpoint-and-exit), and records its exit code in JOB.proc.json when it ends. The Studio
starts it in a new session, so it and the training outlive the Studio; a restarted Studio reads the files.
Standard library only: it must not load torch before the command does.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from finetune.files import atomic_write_json


def proc_path(job_file: Path) -> Path:
    return job_file.with_suffix(".proc.json")


def write_proc(job_file: Path, **values) -> None:
    atomic_write_json(proc_path(job_file), values)


def main(job_file: str) -> int:
    job_path = Path(job_file)
    job = json.loads(job_path.read_text(encoding="utf-8"))
    argv = [sys.executable, "-m", "finetune.cli", *job["args"]]
    with open(job["log_path"], "ab") as log:
        child = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    started = time.time()
    write_proc(job_path, runner_pid=os.getpid(), child_pid=child.pid, started=started)

    def forward(signum, frame):
        child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    code = child.wait()
    write_proc(
        job_path,
        runner_pid=os.getpid(),
        child_pid=child.pid,
        started=started,
        exit_code=code,
        ended=time.time(),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
