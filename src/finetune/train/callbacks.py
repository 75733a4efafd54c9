"""Trainer callbacks: what finetune adds to the HF training loop, one small class per concern.

- `MetricsLog`: every log event as one JSON line in output_dir/metrics.jsonl, written as it happens.
- `LossBeforeEval`: a training loss is logged at each evaluation, so the loss table never says "No log".
- `StopOnSignal`: Ctrl-C / SIGTERM finish the current step, save a checkpoint and stop cleanly.
- `LossWatchdog`: axolotl's loss_watchdog_*: stop when the training loss stays too high.
- `RichProgress`: a progress bar with the latest losses and real tokens/s.
- `Throughput`: real (non-pad) tokens trained in this session, for an honest tokens/s after a resume.
- `WandbConfig`: the resolved (redacted) finetune config attached to the W&B run.
- `Heartbeat`: output_dir/status.json (pid, step of total, time), so a reader (the Studio) knows a run is alive.
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from pathlib import Path

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from transformers import TrainerCallback

from finetune.files import atomic_write_json


class MetricsLog(TrainerCallback):
    """Append each log dict (plus step) to metrics.jsonl; only the main process writes."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({**logs, "step": state.global_step, "time": round(time.time(), 3)}) + "\n")


class LossBeforeEval(TrainerCallback):
    """Force a loss log on any step that evaluates (logging_steps may be coarser than eval_steps)."""

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_evaluate:
            control.should_log = True

    def on_epoch_end(self, args, state, control, **kwargs):
        if control.should_evaluate:
            control.should_log = True


class StopOnSignal(TrainerCallback):
    """First SIGINT/SIGTERM: finish the step, checkpoint, stop. A second Ctrl-C aborts at once.

    The handlers live only while training runs; the previous ones are restored afterwards.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received: int | None = None
        self.saved_step: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame):
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum

    def on_train_begin(self, args, state, control, **kwargs):
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def on_step_end(self, args, state, control, **kwargs):
        if self.received is not None:
            control.should_save = True
            control.should_training_stop = True
            self.saved_step = state.global_step

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.received is not None and self.saved_step == state.global_step:
            control.should_save = False  # already saved at this step; don't save or evaluate again
            control.should_evaluate = False

    def on_train_end(self, args, state, control, **kwargs):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.received).name if self.received is not None else ""


class LossWatchdog(TrainerCallback):
    """Stop training once `patience` logged training losses in a row are above `threshold`.

    axolotl's loss_watchdog_threshold / loss_watchdog_patience (default 3), counted per log line: axolotl looks
    at the last logged loss at every step, which counts one log several times when logging_steps > 1. A NaN
    or infinite loss counts as above (axolotl's `loss > threshold` is False for NaN, which would reset the
    count on exactly the run that most needs stopping). Every process sees the same loss (the Trainer averages
    it across processes before logging), so all stop at the same step.
    """

    def __init__(self, threshold: float, patience: int | None = None):
        self.threshold = threshold
        self.patience = patience or 3
        self.above = 0
        self.stopped_step: int | None = None
        self.message = ""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs or self.stopped_step is not None:
            return
        loss = float(logs["loss"])
        self.above = self.above + 1 if not math.isfinite(loss) or loss > self.threshold else 0
        if self.above >= self.patience:
            control.should_training_stop = True
            self.stopped_step = state.global_step
            self.message = (
                f"loss_watchdog_threshold: the training loss stayed above {self.threshold} for {self.patience} "
                f"logged steps in a row (last: {loss:.4g})"
            )


class RichProgress(TrainerCallback):
    """One progress bar for training; evaluation results are printed as lines above it."""

    def __init__(self, console):
        self.console = console
        self.progress = None
        self.task = None
        self.loss = None

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.task = self.progress.add_task(
            "train", total=state.max_steps, completed=state.global_step, info=""
        )
        self.progress.start()

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.progress is None or not logs:
            return
        if "loss" in logs:
            self.loss = logs["loss"]
            info = f"loss {logs['loss']:.4f}"
            if "train_tokens_per_second" in logs:
                info += f"  {logs['train_tokens_per_second']:.0f} tok/s"
            self.progress.update(self.task, info=info)
        if "eval_loss" in logs:
            train = f"  train loss {self.loss:.4f}" if self.loss is not None else ""
            self.progress.console.print(f"step {state.global_step}: eval loss {logs['eval_loss']:.4f}{train}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


class Throughput(TrainerCallback):
    """Tokens already counted when training (re)starts: a resumed run's tokens/s covers only its own work."""

    def __init__(self):
        self.start_tokens = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.start_tokens = state.num_input_tokens_seen

    def session_tokens(self, state) -> int:
        return state.num_input_tokens_seen - self.start_tokens


class WandbConfig(TrainerCallback):
    """Attach the resolved config (secrets redacted) to the W&B run the Trainer's W&B callback started."""

    def __init__(self, resolved: dict):
        self.resolved = resolved

    def on_train_begin(self, args, state, control, **kwargs):
        import wandb

        if state.is_world_process_zero and wandb.run is not None:
            wandb.run.config.update({"finetune": self.resolved}, allow_val_change=True)


class Heartbeat(TrainerCallback):
    """output_dir/status.json, replaced atomically: this process's pid, step of total and the time, at the start,
    at most every `every` seconds while training, and at the end. A reader that finds the pid alive knows the run
    is still training (the Studio reattaches to it after a restart); a dead pid with state `running` is a run
    that was killed. Only the main process writes."""

    def __init__(self, path: str | Path, every: float = 2.0):
        self.path = Path(path)
        self.every = every
        self.started = time.time()
        self.last = 0.0

    def _write(self, state, status: str) -> None:
        self.last = time.time()
        atomic_write_json(
            self.path,
            {
                "pid": os.getpid(),
                "state": status,
                "step": state.global_step,
                "max_steps": state.max_steps,
                "started": round(self.started, 3),
                "heartbeat": round(self.last, 3),
            },
        )

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self._write(state, "running")

    def on_step_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero and time.time() - self.last >= self.every:
            self._write(state, "running")

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self._write(state, "ended")
