"""The Trainer of one run: which class trains it (finetune's SFT Trainer, or TRL's for GRPO, DPO, reward models,
KTO, ORPO, SimPO) and the callbacks every run gets (metrics file, signals, progress, early stopping, loss watchdog,
W&B, hub pushes)."""

from __future__ import annotations

from pathlib import Path

from finetune.config import Config
from finetune.train import grpo


def build_trainer(
    cfg: Config, args, model, tokenizer, train_set, eval_set, console, extra_callbacks: list, plan
):
    """The Trainer with the batching plan (batching.py) and finetune's callbacks (metrics file, signals,
    progress, W&B).

    Returns (trainer, the signal watcher, the token counter): `run` reads those two after training.
    """
    from transformers import EarlyStoppingCallback
    from transformers.trainer_callback import PrinterCallback

    from finetune.config import resolved_dict
    from finetune.model import speedups
    from finetune.train import callbacks as cb
    from finetune.train import eval_metrics
    from finetune.train.trainer import FinetuneTrainer

    stop, throughput = cb.StopOnSignal(), cb.Throughput()
    callbacks = [
        cb.LossBeforeEval(),
        cb.MetricsLog(Path(args.output_dir) / "metrics.jsonl"),
        stop,
        throughput,
        cb.RichProgress(console),
        cb.Heartbeat(Path(args.output_dir) / "status.json"),
    ]
    if cfg.early_stopping_patience and args.eval_strategy != "no":
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience))
    if cfg.loss_watchdog_threshold is not None:
        callbacks.append(cb.LossWatchdog(cfg.loss_watchdog_threshold, cfg.loss_watchdog_patience))
    if cfg.use_wandb:
        callbacks.append(cb.WandbConfig(resolved_dict(cfg)))
    if cfg.hub_model_id:
        from finetune.train.hub_push import HubPush

        callbacks.append(HubPush(cfg, console))
    if cfg.online_rl:  # rl: grpo: TRL's GRPOTrainer, same arguments and callbacks (grpo.py)
        trainer = grpo.build_trainer(
            cfg, args, model, tokenizer, train_set, callbacks + extra_callbacks, console
        )
        trainer.remove_callback(PrinterCallback)
    elif cfg.preference:  # rl: dpo, reward_model (preference.py); kto / orpo / simpo (pair_methods.py)
        from finetune.train import pair_methods
        from finetune.train import preference as rl

        builder = pair_methods if cfg.rl in ("kto", "orpo", "simpo") else rl
        trainer = builder.build_trainer(
            cfg, args, model, tokenizer, train_set, eval_set, callbacks + extra_callbacks, console
        )
        trainer.remove_callback(PrinterCallback)
    else:
        trainer = FinetuneTrainer(
            model=model,
            args=args,
            train_dataset=train_set,
            eval_dataset=eval_set,
            data_collator=plan.train_collator,
            batch_plan=plan,
            offload=speedups.offload_applies(cfg),
            processing_class=tokenizer,
            callbacks=callbacks + extra_callbacks,
            # token accuracy (+ eval_metrics: scores)
            **eval_metrics.trainer_hooks(cfg, model, tokenizer, eval_set),
        )
        trainer.remove_callback(PrinterCallback)  # it prints raw dicts; RichProgress shows the same, readably
    if cfg.loraplus_lr_ratio is not None:
        trainer.loraplus = (cfg.loraplus_lr_ratio, cfg.loraplus_lr_embedding)
    return trainer, stop, throughput
