"""Work the Studio starts: `finetune` commands, each as its own process (runner.py), recorded under
ROOT/.studio/jobs/ so a restarted Studio — or a second browser — sees the same queue and the same runs.

A job is `ID.json` (what to run, written by the Studio), `ID.log` (the command's output) and `ID.proc.json`
(pids and exit code, written by the runner). Training jobs wait in a queue: one run per device at a time; the
queue is those files, so it survives a restart. Other commands (export, merge, eval, push) start at once.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from finetune.files import atomic_write_json
from finetune.studio import runs
from finetune.studio.runner import proc_path


@dataclass
class Job:
    id: str
    kind: str  # train, resume, export, merge, eval, push
    args: list[str]  # after `finetune`
    run: str  # the run folder it concerns, relative to the root ("" when unknown)
    device: str
    created: float
    state: str = "queued"  # queued, started (the Studio launched its runner)
    runner_pid: int | None = None
    log_path: str = ""
    proc: dict | None = None  # runner.py's record

    @property
    def command(self) -> str:
        return "finetune " + shlex.join(self.args)

    @property
    def status(self) -> str:
        """queued, running, done, failed (exit code != 0), stopped (by a signal: resumable) or lost."""
        if self.state == "queued":
            return "queued"
        proc = self.proc or {}
        if "exit_code" in proc:
            code = proc["exit_code"]
            return "done" if code == 0 else "stopped" if code in (130, 143, -15, -2) else "failed"
        return "running" if runs.alive(proc.get("runner_pid") or self.runner_pid) else "lost"

    def as_json(self) -> dict:
        return {
            "id": self.id, "kind": self.kind, "command": self.command, "run": self.run, "device": self.device,
            "created": self.created, "status": self.status, "exit_code": (self.proc or {}).get("exit_code"),
        }  # fmt: skip


class Jobs:
    """The job files of one root and the processes this Studio started (reaped so none stays a zombie)."""

    TRAINING = ("train", "resume")

    def __init__(self, root: Path, device: str):
        self.root = root
        self.folder = root / ".studio" / "jobs"
        self.device = device
        self.children: dict[int, subprocess.Popen] = {}

    def all(self) -> list[Job]:
        out = []
        for path in sorted(self.folder.glob("*.json")) if self.folder.is_dir() else []:
            if path.name.endswith(".proc.json"):
                continue
            try:
                raw = json.loads(path.read_text(encoding="utf-8"))
                job = Job(**{k: v for k, v in raw.items() if k != "proc"})
                proc = proc_path(path)
                job.proc = json.loads(proc.read_text(encoding="utf-8")) if proc.is_file() else None
            except (OSError, ValueError, TypeError):
                continue  # a job file being replaced or damaged: the next look reads it
            out.append(job)
        return sorted(out, key=lambda j: j.created)

    def get(self, job_id: str) -> Job | None:
        return next((j for j in self.all() if j.id == job_id), None)

    def add(self, kind: str, args: list[str], run: str) -> Job:
        job_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
        job = Job(job_id, kind, args, run, self.device, time.time())
        job.log_path = str(self.folder / f"{job_id}.log")
        self._save(job)
        self.tick()
        return job

    def _save(self, job: Job) -> None:
        record = {k: v for k, v in job.__dict__.items() if k != "proc"}
        atomic_write_json(self.folder / f"{job.id}.json", record)

    def tick(self, busy_runs: list[str] = ()) -> None:
        """Start what may start: queued commands at once, queued training when its device is free (no job of
        this Studio and no run found by its heartbeat is training there)."""
        for pid, child in list(self.children.items()):
            if child.poll() is not None:
                del self.children[pid]
        jobs = self.all()
        busy = {j.device for j in jobs if j.kind in self.TRAINING and j.status == "running"}
        if busy_runs:
            busy.add(self.device)
        for job in jobs:
            if job.state != "queued":
                continue
            if job.kind in self.TRAINING:
                if job.device in busy:
                    continue
                busy.add(job.device)
            self._launch(job)

    def _launch(self, job: Job) -> None:
        Path(job.log_path).write_text(f"$ {job.command}\n", encoding="utf-8")
        child = subprocess.Popen(
            [sys.executable, "-m", "finetune.studio.runner", str(self.folder / f"{job.id}.json")],
            cwd=self.root, start_new_session=True,  # its own session: it outlives the Studio and its Ctrl-C
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.children[child.pid] = child
        job.state, job.runner_pid = "started", child.pid
        self._save(job)

    def cancel(self, job_id: str) -> bool:
        """A queued job leaves the queue (a started one is stopped through its run instead)."""
        job = self.get(job_id)
        if job is None or job.state != "queued":
            return False
        (self.folder / f"{job.id}.json").unlink(missing_ok=True)
        return True

    def stop(self, job: Job) -> bool:
        """SIGTERM to the job's runner, which passes it to the command: training checkpoints and exits."""
        pid = (job.proc or {}).get("runner_pid") or job.runner_pid
        if job.status != "running" or not pid:
            return False
        os.kill(pid, signal.SIGTERM)
        return True

    def log(self, job: Job, limit: int = 20_000) -> str:
        try:
            return Path(job.log_path).read_text(encoding="utf-8", errors="replace")[-limit:]
        except OSError:
            return ""

    def for_run(self, run: str) -> list[Job]:
        return [j for j in self.all() if j.run == run]
