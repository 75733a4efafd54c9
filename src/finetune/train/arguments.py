"""The config's training keys as `transformers.TrainingArguments`, mapped by meaning, not by old name.

transformers 5 renamed or reshaped several axolotl-era keys (group_by_length became
`train_sampling_strategy`, warmup_ratio folded into a fractional `warmup_steps`), and "per epoch" keys
(evals_per_epoch, saves_per_epoch) have no Trainer equivalent at all: they are resolved here into step
counts from the real number of optimizer steps, so what the user meant is what runs.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass

from finetune.config import Config
from finetune.config.fsdp import requested as fsdp_requested
from finetune.model import Precision, speedups
from finetune.train import distributed, fsdp, tracking

BNB_OPTIMIZERS = {
    "adamw_bnb_8bit": "AdamW8bit",
    "adamw_8bit": "AdamW8bit",
    "paged_adamw_8bit": "PagedAdamW8bit",
    "paged_adamw_32bit": "PagedAdamW32bit",
    "lion_8bit": "Lion8bit",
    "paged_lion_8bit": "PagedLion8bit",
}


@dataclass(frozen=True)
class Schedule:
    """Optimizer steps of the run, worked out before the Trainer exists (it needs them for per-epoch keys)."""

    steps_per_epoch: int
    total_steps: int


def schedule(cfg: Config, train_rows: int, batches_per_epoch: int | None = None) -> Schedule:
    """Same arithmetic as the Trainer: batches per epoch per process, then accumulation, rounded up.

    Token-budget batching (sample_packing) knows its batch count per process (`batches_per_epoch`); without
    it, batches are micro_batch_size rows.
    """
    batches = batches_per_epoch or math.ceil(train_rows / (cfg.micro_batch_size * distributed.world_size()))
    per_epoch = max(1, math.ceil(batches / cfg.gradient_accumulation_steps))
    total = cfg.max_steps if cfg.max_steps and cfg.max_steps > 0 else math.ceil(cfg.num_epochs * per_epoch)
    return Schedule(steps_per_epoch=per_epoch, total_steps=max(1, total))


def packing_note(cfg: Config, train_rows: int, sched: Schedule) -> str:
    """What packing did to the schedule, when it matters: more than twice the rows an unpacked step takes.

    sample_packing fills each micro-batch to a token budget (axolotl's meaning of micro_batch_size there), so
    short rows give far fewer optimizer steps than the same config unpacked: with the same learning rate
    and warm-up the model sees fewer updates, which a user should know before judging the result.
    """
    unpacked = schedule(cfg, train_rows)
    per_epoch_rows = train_rows / sched.steps_per_epoch
    unpacked_rows = cfg.micro_batch_size * cfg.gradient_accumulation_steps * distributed.world_size()
    if not cfg.sample_packing or per_epoch_rows <= 2 * unpacked_rows:
        return ""
    return (
        f" — sample_packing puts ~{per_epoch_rows:.0f} rows in an optimizer step ({unpacked_rows} unpacked); "
        f"the same config unpacked takes {unpacked.total_steps} steps (without sample_packing, batch_flattening, "
        "the default, keeps those steps without the padding)"
    )


def _steps(value: float, sched: Schedule) -> int:
    """A step count, or a ratio (< 1) of all steps as axolotl and HF read it."""
    return max(1, round(value * sched.total_steps)) if value < 1 else int(value)


def _interval(
    per_epoch: int | None, steps: float | None, strategy: str | None, sched: Schedule, default: str
) -> tuple[str, int | None]:
    """(strategy, steps) for evaluation or saving: explicit strategy > N per epoch > every N steps > default."""
    if strategy is not None and strategy != "steps":
        return strategy, None
    if per_epoch == 0:
        return "no", None
    if per_epoch:
        return "steps", max(1, sched.steps_per_epoch // per_epoch)
    if steps:
        return "steps", _steps(steps, sched)
    if strategy == "steps":
        return "steps", max(1, sched.steps_per_epoch)
    return default, None


def optimizer(cfg: Config, notes: list[str]) -> str:
    """The optimizer name for the Trainer; bitsandbytes ones are probed once on CPU and replaced if they fail."""
    import torch

    name = cfg.optimizer
    if name == "adamw_torch_8bit":
        if importlib.util.find_spec("torchao") is None:
            notes.append("optimizer: adamw_torch_8bit needs torchao (not installed); using adamw_torch")
            return "adamw_torch"
    if name in BNB_OPTIMIZERS and not torch.cuda.is_available():
        try:
            import bitsandbytes as bnb

            param = torch.nn.Parameter(torch.zeros(4096))
            param.grad = torch.ones(4096)
            getattr(bnb.optim, BNB_OPTIMIZERS[name])([param], lr=1e-3).step()
        except Exception as exc:  # any failure of the probe means the real optimizer would fail too
            notes.append(
                f"optimizer: {name} does not run on this CPU ({type(exc).__name__}); using adamw_torch"
            )
            return "adamw_torch"
        if name.startswith("paged_"):
            notes.append(f"optimizer: {name} runs unpaged on CPU (paging only helps GPU memory)")
    return name


def _warmup(cfg: Config) -> float:
    if cfg.warmup_ratio is not None:
        return cfg.warmup_ratio
    if cfg.warmup_steps is None:
        return 0
    return cfg.warmup_steps if cfg.warmup_steps < 1 else int(cfg.warmup_steps)


def _scheduler(cfg: Config) -> dict:
    """lr_scheduler (+ lr_scheduler_kwargs), or with eta_min / cosine_min_lr_ratio (cosine only,
    config/cross_checks.py) transformers' cosine decaying to that LR (an absolute one, or a fraction of
    learning_rate)."""
    extra = dict(cfg.lr_scheduler_kwargs or {})
    if cfg.eta_min is not None:
        floor = {"min_lr": cfg.eta_min}
    elif cfg.cosine_min_lr_ratio is not None:
        floor = {"min_lr_rate": cfg.cosine_min_lr_ratio}
    else:
        return {"lr_scheduler_type": cfg.lr_scheduler, **({"lr_scheduler_kwargs": extra} if extra else {})}
    return {"lr_scheduler_type": "cosine_with_min_lr", "lr_scheduler_kwargs": {**extra, **floor}}


def _dataloader(cfg: Config, on_gpu: bool, notes: list[str]) -> dict:
    """Background workers as the config says; pinned memory only where there is a GPU to copy to."""
    if cfg.dataloader_pin_memory and not on_gpu:
        notes.append("dataloader_pin_memory: no effect on CPU (it speeds up copies to a GPU)")
    return {
        "dataloader_num_workers": cfg.dataloader_num_workers,
        "dataloader_prefetch_factor": cfg.dataloader_prefetch_factor,
        "dataloader_pin_memory": on_gpu and cfg.dataloader_pin_memory is not False,
    }


def _ddp(cfg: Config, notes: list[str]) -> dict:
    """DDP's own settings, for multi-process runs without DeepSpeed (which has its own)."""
    keys = ("ddp_find_unused_parameters", "ddp_bucket_cap_mb", "ddp_broadcast_buffers")
    if distributed.world_size() == 1:
        return {}
    engine = "DeepSpeed" if cfg.deepspeed else "FSDP" if fsdp_requested(cfg) else None
    if engine:
        notes += [
            f"{key}: no effect under {engine} (it is a DDP setting)" for key in keys if getattr(cfg, key)
        ]
        return {}
    return {
        "ddp_find_unused_parameters": bool(cfg.ddp_find_unused_parameters),
        "ddp_bucket_cap_mb": cfg.ddp_bucket_cap_mb,
        "ddp_broadcast_buffers": cfg.ddp_broadcast_buffers,
    }


def training_arguments(
    cfg: Config,
    prec: Precision,
    train_rows: int,
    has_eval: bool,
    output_dir: str,
    notes: list[str],
    batches_per_epoch: int | None = None,
    on_gpu: bool | None = None,
    length_grouped: bool | None = None,
):
    """Build TrainingArguments; every adjustment to what the config says is explained in `notes`.

    `batches_per_epoch`: batches per process per epoch when the batching plan decides it (batching.py);
    `length_grouped`: whether the plan's batches come from HF's length-grouped sampler (group_by_length, or
    batch_flattening where it cannot flatten); None: as group_by_length says.
    """
    import torch
    from transformers import TrainingArguments

    on_gpu = torch.cuda.is_available() if on_gpu is None else on_gpu
    if length_grouped is None:
        length_grouped = cfg.group_by_length and not cfg.sample_packing
    sched = schedule(cfg, train_rows, batches_per_epoch)
    if has_eval:
        eval_strategy, eval_steps = _interval(
            cfg.evals_per_epoch, cfg.eval_steps, cfg.eval_strategy, sched, "epoch"
        )
    else:
        eval_strategy, eval_steps = "no", None
    save_strategy, save_steps = _interval(
        cfg.saves_per_epoch, cfg.save_steps, cfg.save_strategy, sched, "epoch"
    )

    load_best = cfg.load_best_model_at_end and eval_strategy != "no"
    if load_best and save_strategy != "best" and (save_strategy, save_steps) != (eval_strategy, eval_steps):
        # The best model can only be restored from a checkpoint saved at its evaluation: save at every one.
        save_strategy, save_steps = eval_strategy, eval_steps
        notes.append(
            f"load_best_model_at_end: a checkpoint is saved at every evaluation ({save_strategy}"
            f"{f', every {save_steps} steps' if save_steps else ''})"
        )

    kwargs = {
        "output_dir": output_dir,
        "per_device_train_batch_size": cfg.micro_batch_size,
        "per_device_eval_batch_size": cfg.eval_batch_size or cfg.micro_batch_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
        "num_train_epochs": cfg.num_epochs,
        "max_steps": cfg.max_steps if cfg.max_steps and cfg.max_steps > 0 else -1,
        "optim": optimizer(cfg, notes),
        **_scheduler(cfg),
        "learning_rate": cfg.learning_rate,
        "warmup_steps": _warmup(cfg),
        "weight_decay": cfg.weight_decay,
        "neftune_noise_alpha": cfg.neftune_noise_alpha,
        "max_grad_norm": cfg.max_grad_norm,
        "logging_strategy": "steps",
        "logging_steps": cfg.logging_steps,
        "logging_first_step": True,
        "eval_strategy": eval_strategy,
        "save_strategy": save_strategy,
        "save_total_limit": cfg.save_total_limit,
        "load_best_model_at_end": load_best,
        "metric_for_best_model": "eval_loss" if (load_best or cfg.early_stopping_patience) else None,
        "greater_is_better": False if (load_best or cfg.early_stopping_patience) else None,
        "seed": cfg.seed,
        "data_seed": cfg.seed,
        # sample_packing batches through finetune's own sampler (batching.py), not the Trainer's
        "train_sampling_strategy": "group_by_length" if length_grouped else "random",
        "bf16": prec.bf16,
        "fp16": prec.fp16,
        "tf32": prec.tf32,
        **speedups.compile_arguments(cfg, on_gpu, notes),
        **speedups.liger_arguments(cfg, on_gpu, notes),
        "deepspeed": distributed.for_trainer(cfg.deepspeed),  # absent batch/precision keys: "auto"
        # accelerate counts CPU processes (gloo) only when told the run is on CPU: else each trains alone.
        # Not for one process: there it would also reset torch's thread count (model.cpu_threads).
        "use_cpu": True if distributed.world_size() > 1 and distributed.cpu_only() else None,
        # find_unused_parameters off by default: every LoRA weight takes part in every forward, so DDP need
        # not search the autograd graph each step
        **_ddp(cfg, notes),
        **fsdp.trainer_arguments(cfg, distributed.world_size(), on_gpu, notes),
        "ddp_timeout": cfg.ddp_timeout,
        **tracking.trainer_arguments(cfg),  # report_to (W&B, MLflow, TensorBoard, Trackio) and run_name
        # tokens/s counts real tokens only: padding is work, not progress
        "include_num_input_tokens_seen": "non_padding",
        "disable_tqdm": True,  # progress is drawn by finetune's rich callback
        **_dataloader(cfg, on_gpu, notes),
        "torch_empty_cache_steps": cfg.torch_empty_cache_steps if on_gpu else None,
    }
    if eval_steps:
        kwargs["eval_steps"] = eval_steps
    if save_steps:
        kwargs["save_steps"] = save_steps
    for key in ("adam_beta1", "adam_beta2", "adam_epsilon"):
        if getattr(cfg, key) is not None:
            kwargs[key] = getattr(cfg, key)
    return TrainingArguments(**{k: v for k, v in kwargs.items() if v is not None}), sched
