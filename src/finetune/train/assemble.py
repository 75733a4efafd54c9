"""The Trainer of one run: the method table's builder for it (finetune's SFT Trainer here, or TRL's for GRPO,
DPO, reward models, KTO, ORPO, SimPO) and the callbacks every run gets (metrics file, signals, progress, early
stopping, loss watchdog, W&B, hub pushes)."""

from __future__ import annotations

from pathlib import Path

from finetune import methods
from finetune.config import Config, resolved_dict
from finetune.model import speedups
from finetune.train import eval_metrics


def build_trainer(
    cfg: Config, args, model, tokenizer, train_set, eval_set, console, extra_callbacks: list, plan
):
    """The Trainer with the batching plan (batching.py) and finetune's callbacks (metrics file, signals,
    progress, W&B).

    Returns (trainer, the signal watcher, the token counter): `run` reads those two after training.
    """
    from transformers import EarlyStoppingCallback
    from transformers.trainer_callback import PrinterCallback

    from finetune.train.callbacks import (
        Heartbeat,
        LossBeforeEval,
        LossWatchdog,
        MetricsLog,
        RichProgress,
        StopOnSignal,
        Throughput,
        WandbConfig,
    )

    stop, throughput = StopOnSignal(), Throughput()
    callbacks = [
        LossBeforeEval(),
        MetricsLog(Path(args.output_dir) / "metrics.jsonl"),
        stop,
        throughput,
        RichProgress(console),
        Heartbeat(Path(args.output_dir) / "status.json"),
    ]
    if cfg.early_stopping_patience and args.eval_strategy != "no":
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience))
    if cfg.loss_watchdog_threshold is not None:
        callbacks.append(LossWatchdog(cfg.loss_watchdog_threshold, cfg.loss_watchdog_patience))
    if cfg.use_wandb:
        callbacks.append(WandbConfig(resolved_dict(cfg)))
    if cfg.hub_model_id:
        from finetune.train.hub_push import HubPush

        callbacks.append(HubPush(cfg, console))
    build = methods.of(cfg).build_trainer()  # one signature for every method (finetune.methods)
    trainer = build(
        cfg, args, model, tokenizer, train_set, eval_set, callbacks + extra_callbacks, console, plan
    )
    trainer.remove_callback(PrinterCallback)  # it prints raw dicts; RichProgress shows the same, readably
    if cfg.loraplus_lr_ratio is not None:
        trainer.loraplus = (cfg.loraplus_lr_ratio, cfg.loraplus_lr_embedding)
    return trainer, stop, throughput


def sft_trainer(
    cfg: Config, args, model, tokenizer, train_set, eval_set, callbacks: list, console=None, plan=None
):
    """Supervised fine-tuning: finetune's Trainer (train/trainer.py) with the batching plan, token accuracy and
    the eval_metrics scores."""
    from finetune.train.trainer import FinetuneTrainer

    return FinetuneTrainer(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=plan.train_collator,
        batch_plan=plan,
        offload=speedups.offload_applies(cfg),
        processing_class=tokenizer,
        callbacks=callbacks,
        # token accuracy (+ eval_metrics: scores)
        **eval_metrics.trainer_hooks(cfg, model, tokenizer, eval_set),
    )
