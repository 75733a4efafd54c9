"""finetune's Trainer callbacks, driven by hand-made states and log lines (no model, no training)."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("transformers")

from transformers import TrainerControl, TrainerState  # noqa: E402

from finetune.train.callbacks import LossWatchdog  # noqa: E402


def feed(watchdog: LossWatchdog, logs: list[dict]) -> list[int]:
    """Log lines one per step, as the Trainer sends them; the steps after which training was told to stop."""
    state, control, stops = TrainerState(), TrainerControl(), []
    for step, entry in enumerate(logs, start=1):
        state.global_step = step
        watchdog.on_log(None, state, control, logs=entry)
        if control.should_training_stop:
            stops.append(step)
            control = TrainerControl()  # the Trainer would have stopped; keep feeding to see it stays quiet
    return stops


def test_loss_watchdog_stops_after_patience_logs_in_a_row_above_the_threshold():
    dog = LossWatchdog(threshold=5.0, patience=3)
    losses = [6.0, 7.0, 4.0, 6.0, 6.0, 5.0, 6.0, 9.0, 8.0, 7.0, 9.0]
    # 4.0 resets the count, so does 5.0 (not above); 6, 9, 8 are three in a row: stop at step 9, once
    assert feed(dog, [{"loss": x} for x in losses]) == [9]
    assert dog.stopped_step == 9
    assert dog.message == (
        "loss_watchdog_threshold: the training loss stayed above 5.0 for 3 logged steps in a row (last: 8)"
    )


def test_loss_watchdog_ignores_other_log_lines_and_counts_nan_as_above():
    dog = LossWatchdog(threshold=2.0)  # patience unset: axolotl's default, 3
    logs = [
        {"loss": 3.0},
        {"eval_loss": 0.1},
        {"loss": math.nan},
        {"train_loss": 0.5},
        {},
        {"loss": math.inf},
    ]
    assert feed(dog, logs) == [6]
    assert LossWatchdog(threshold=2.0).patience == 3
    quiet = LossWatchdog(threshold=2.0, patience=1)
    assert (
        feed(quiet, [{"loss": 1.9}, {"eval_loss": 9.0}, {"loss": 2.0}]) == [] and quiet.stopped_step is None
    )
