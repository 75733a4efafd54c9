"""`lm_eval_tasks`: lm-evaluation-harness on the trained model when training ends (axolotl's LMEvalPlugin keys).

The task names are checked before anything loads (`check`, one line and exit 2 for an unknown one), and the
evaluation runs on the model still in memory, after the run's files are written and before the card, so the
card carries the scores. Same code and numbers as `finetune eval OUTPUT_DIR --tasks ...` (model/harness.py).
"""

from __future__ import annotations

from pathlib import Path

from finetune.config import Config
from finetune.config.fsdp import requested as fsdp_requested
from finetune.model import harness
from finetune.outputs import lm_eval_results
from finetune.train import distributed


def check(cfg: Config):
    """lm-eval's TaskManager for the config's tasks (None without lm_eval_tasks); an unknown name: UserError."""
    if not cfg.lm_eval_tasks:
        return None
    return harness.task_manager(cfg.lm_eval_tasks, cfg.lm_eval_include_path, "lm_eval_tasks")


def skip_reason(cfg: Config, smoke: bool) -> str | None:
    """Why the evaluation will not run after this training, or None when it will."""
    if not cfg.lm_eval_tasks:
        return None
    later = f"run `finetune eval {cfg.output_dir} --tasks {','.join(cfg.lm_eval_tasks)}` afterwards"
    if smoke:
        return "lm_eval_tasks: task names checked; a smoke run does not evaluate its tiny random model"
    if distributed.world_size() > 1 or cfg.deepspeed or fsdp_requested(cfg):
        return f"lm_eval_tasks: not run after a sharded or multi-process run (the model is split); {later}"
    return None


def run(cfg: Config, manager, model, tokenizer, output_dir: Path, console) -> None:
    """Evaluate the trained model and save its scores under eval_results.json's `lm_eval`."""
    console.print(f"lm-eval: {', '.join(cfg.lm_eval_tasks)} on the trained model")
    results = harness.evaluate(
        model, tokenizer, cfg.lm_eval_tasks, manager, limit=cfg.lm_eval_limit,
        num_fewshot=cfg.lm_eval_num_fewshot, batch_size=cfg.lm_eval_batch_size or 8,
    )  # fmt: skip
    saved = lm_eval_results.save(output_dir, results, "finetuned", "adapter")
    console.print(lm_eval_results.console_table(saved, list(results)))
