"""Config keys -> TrainingArguments, by meaning (no model is loaded: these run in well under a second each)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("transformers")

from finetune import config
from finetune.model import Precision  # noqa: E402
from finetune.train import arguments as trainer_args
from finetune.train import tracking  # noqa: E402

QA = Path(__file__).resolve().parents[2] / "examples" / "finance_qa.jsonl"
FP32 = Precision(bf16=False, fp16=False, tf32=None, dtype="float32")


def build(tmp_path, rows=100, has_eval=True, **over):
    raw = {"base_model": "org/model", "adapter": "lora", "datasets": [{"path": str(QA)}], **over}
    notes: list[str] = []
    args, sched = trainer_args.training_arguments(
        config.validate(raw), FP32, rows, has_eval, str(tmp_path), notes
    )
    return args, sched, notes


def test_batch_epochs_and_optimizer_keys(tmp_path):
    args, sched, _ = build(
        tmp_path, micro_batch_size=4, eval_batch_size=8, gradient_accumulation_steps=2, num_epochs=3,
        learning_rate=1e-4, lr_scheduler="linear", weight_decay=0.01, max_grad_norm=0.5, seed=5,
        adam_beta2=0.95, save_total_limit=2,
    )  # fmt: skip
    assert (args.per_device_train_batch_size, args.per_device_eval_batch_size) == (4, 8)
    assert args.gradient_accumulation_steps == 2 and args.num_train_epochs == 3 and args.max_steps == -1
    assert args.learning_rate == 1e-4 and args.lr_scheduler_type == "linear"
    assert (args.weight_decay, args.max_grad_norm, args.adam_beta2) == (0.01, 0.5, 0.95)
    assert args.seed == args.data_seed == 5 and args.save_total_limit == 2
    assert (sched.steps_per_epoch, sched.total_steps) == (13, 39)  # 25 batches / 2, rounded up; x 3
    assert args.include_num_input_tokens_seen == "non_padding"
    assert args.report_to == []


def test_per_epoch_keys_become_step_counts(tmp_path):
    args, sched, _ = build(tmp_path, micro_batch_size=2, evals_per_epoch=4, saves_per_epoch=2, num_epochs=2)
    assert sched.steps_per_epoch == 50
    assert (args.eval_strategy, args.eval_steps) == ("steps", 12)
    assert (args.save_strategy, args.save_steps) == ("steps", 25)


def test_defaults_evaluate_and_save_each_epoch(tmp_path):
    args, _, _ = build(tmp_path)
    assert args.eval_strategy == "epoch" and args.save_strategy == "epoch"
    args, _, _ = build(tmp_path, has_eval=False, evals_per_epoch=4)
    assert args.eval_strategy == "no"
    args, _, _ = build(tmp_path, saves_per_epoch=0)
    assert args.save_strategy == "no"


def test_ratios_warmup_and_max_steps(tmp_path):
    args, sched, _ = build(tmp_path, max_steps=200, eval_steps=0.25, save_steps=0.5, warmup_ratio=0.1)
    assert sched.total_steps == 200 and args.max_steps == 200
    assert (args.eval_steps, args.save_steps) == (50, 100)
    assert args.warmup_steps == 0.1  # transformers 5 reads a fraction as a ratio of all steps
    args, _, _ = build(tmp_path, warmup_steps=10)
    assert args.warmup_steps == 10


def test_group_by_length_is_a_sampling_strategy(tmp_path):
    args, _, _ = build(tmp_path, group_by_length=True)
    assert args.train_sampling_strategy == "group_by_length"
    args, _, _ = build(tmp_path)
    assert args.train_sampling_strategy == "random"
    # sample_packing batches through finetune's own token-budget sampler (test_batching.py)
    args, _, notes = build(tmp_path, sample_packing=True, group_by_length=True)
    assert args.train_sampling_strategy == "random" and not notes
    # the batching plan decides (batch_flattening groups by length where it cannot flatten)
    raw = {"base_model": "org/model", "adapter": "lora", "datasets": [{"path": str(QA)}]}
    flat = config.validate({**raw, "batch_flattening": True})
    for grouped in (True, False):
        args, _ = trainer_args.training_arguments(
            flat, FP32, 100, False, str(tmp_path), [], length_grouped=grouped
        )
        assert args.train_sampling_strategy == ("group_by_length" if grouped else "random")


def test_load_best_model_aligns_saves_with_evaluations(tmp_path):
    args, _, notes = build(
        tmp_path, load_best_model_at_end=True, val_set_size=0.1, eval_steps=10, save_steps=25
    )
    assert (
        args.load_best_model_at_end
        and args.metric_for_best_model == "eval_loss"
        and not args.greater_is_better
    )
    assert (args.eval_steps, args.save_steps) == (10, 10)
    assert any("load_best_model_at_end" in n for n in notes)
    args, _, _ = build(tmp_path, early_stopping_patience=2, val_set_size=0.1, eval_steps=10)
    assert args.metric_for_best_model == "eval_loss"


def test_bnb_optimizers_on_cpu(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("CPU behaviour")
    args, _, notes = build(tmp_path, optimizer="adamw_bnb_8bit")
    assert args.optim == "adamw_bnb_8bit" and not notes  # bitsandbytes' 8-bit AdamW steps on CPU
    args, _, notes = build(tmp_path, optimizer="paged_adamw_8bit")
    assert args.optim == "paged_adamw_8bit" and "unpaged" in notes[0]


def test_wandb_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_DIR", raising=False)
    raw = {"base_model": "org/model", "adapter": "lora", "datasets": [{"path": str(QA)}]}
    assert tracking.wandb_environment(config.validate(raw), str(tmp_path)) == {}
    cfg = config.validate(
        {
            **raw,
            "wandb_project": "p",
            "wandb_entity": "team",
            "wandb_watch": True,
            "wandb_log_model": "end",
            "wandb_mode": "offline",
        }
    )
    env = tracking.wandb_environment(cfg, str(tmp_path))
    assert env == {
        "WANDB_PROJECT": "p", "WANDB_ENTITY": "team", "WANDB_WATCH": "gradients", "WANDB_LOG_MODEL": "end",
        "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path),
    }  # fmt: skip
    assert tracking.wandb_environment(cfg.model_copy(update={"wandb_mode": "disabled"}), str(tmp_path)) == {}


def _lr_curve(args, total_steps: int) -> list[float]:
    """The learning rates the Trainer's own scheduler gives, step by step (a one-weight model, no data)."""
    import torch
    from transformers import Trainer

    trainer = Trainer(model=torch.nn.Linear(1, 1), args=args)
    trainer.create_optimizer_and_scheduler(num_training_steps=total_steps)
    lrs = []
    for _ in range(total_steps):
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
        lrs.append(trainer.lr_scheduler.get_last_lr()[0])
    return lrs


def test_eta_min_is_where_the_cosine_schedule_ends(tmp_path):
    args, sched, _ = build(
        tmp_path, has_eval=False, max_steps=20, warmup_steps=2, learning_rate=1e-3, eta_min=1e-4
    )
    assert args.lr_scheduler_type == "cosine_with_min_lr" and args.lr_scheduler_kwargs == {"min_lr": 1e-4}
    lrs = _lr_curve(args, sched.total_steps)
    assert lrs[1] == pytest.approx(1e-3)  # the peak after warm-up
    assert lrs[-1] == pytest.approx(1e-4, rel=1e-9) and min(lrs[1:]) == pytest.approx(1e-4, rel=1e-9)
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:], strict=False))  # decays monotonically to the floor
    args, sched, _ = build(tmp_path, has_eval=False, max_steps=20, warmup_steps=2, learning_rate=1e-3)
    assert args.lr_scheduler_type == "cosine" and _lr_curve(args, sched.total_steps)[-1] == pytest.approx(0)


def test_ddp_find_unused_parameters(tmp_path, monkeypatch):
    args, _, _ = build(tmp_path, ddp_find_unused_parameters=True)
    assert args.ddp_find_unused_parameters is None  # one process: no DDP to configure
    monkeypatch.setattr(trainer_args.distributed, "world_size", lambda: 2)
    args, _, notes = build(tmp_path)
    assert args.ddp_find_unused_parameters is False and not notes  # LoRA: every weight is used each step
    args, _, notes = build(tmp_path, ddp_find_unused_parameters=True)
    assert args.ddp_find_unused_parameters is True and not notes
    args, _, notes = build(tmp_path, ddp_bucket_cap_mb=50, ddp_broadcast_buffers=True, ddp_timeout=60)
    assert (args.ddp_bucket_cap_mb, args.ddp_broadcast_buffers, args.ddp_timeout) == (50, True, 60)
    args, _, notes = build(
        tmp_path, deepspeed={"zero_optimization": {}}, ddp_find_unused_parameters=True, ddp_bucket_cap_mb=50
    )
    assert args.ddp_bucket_cap_mb is None and args.ddp_find_unused_parameters is None
    assert notes == [
        "ddp_find_unused_parameters: no effect under DeepSpeed (it is a DDP setting)",
        "ddp_bucket_cap_mb: no effect under DeepSpeed (it is a DDP setting)",
    ]


def test_cosine_min_lr_ratio_ends_at_a_fraction_of_the_peak(tmp_path):
    args, sched, _ = build(
        tmp_path, has_eval=False, max_steps=20, warmup_steps=2, learning_rate=1e-3, cosine_min_lr_ratio=0.1
    )
    assert args.lr_scheduler_kwargs == {"min_lr_rate": 0.1}
    lrs = _lr_curve(args, sched.total_steps)
    assert lrs[1] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(1e-4, rel=1e-9)
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:], strict=False))
    args, sched, _ = build(
        tmp_path, has_eval=False, max_steps=20, cosine_min_lr_ratio=1.0, learning_rate=1e-3
    )
    assert _lr_curve(args, sched.total_steps) == pytest.approx([1e-3] * 20)  # ratio 1: constant after warm-up


def test_dataloader_keys(tmp_path):
    args, _, notes = build(tmp_path, dataloader_num_workers=2, dataloader_prefetch_factor=4)
    assert (args.dataloader_num_workers, args.dataloader_prefetch_factor) == (2, 4)
    assert args.dataloader_pin_memory is False and not notes  # CPU: nothing to pin for
    args, _, notes = build(tmp_path, dataloader_pin_memory=True, torch_empty_cache_steps=10)
    assert args.dataloader_pin_memory is False and notes == [
        "dataloader_pin_memory: no effect on CPU (it speeds up copies to a GPU)"
    ]
    assert args.torch_empty_cache_steps is None  # no GPU cache to empty
    notes = []
    cfg = config.validate({"base_model": "m", "adapter": "lora", "datasets": [{"path": str(QA)}]})
    assert trainer_args._dataloader(cfg, True, notes)["dataloader_pin_memory"] is True  # GPU default: pinned


def test_neftune_scheduler_kwargs_and_compile_auto(tmp_path):
    args, _, notes = build(tmp_path, noisy_embedding_alpha=5, torch_compile="auto")
    assert args.neftune_noise_alpha == 5 and not args.torch_compile and not notes  # auto: silently not on CPU
    args, _, notes = build(tmp_path, torch_compile=True)
    assert notes and notes[0].startswith("torch_compile: skipped on CPU")
    args, sched, _ = build(
        tmp_path, has_eval=False, max_steps=20, learning_rate=1e-3, lr_scheduler="cosine_with_restarts",
        lr_scheduler_kwargs={"num_cycles": 2},
    )  # fmt: skip
    assert args.lr_scheduler_kwargs == {"num_cycles": 2}
    lrs = _lr_curve(args, sched.total_steps)
    assert lrs[8] < 1e-4 and lrs[9] == pytest.approx(
        1e-3
    )  # two cosine cycles: back at the peak after step 10
    args, _, _ = build(tmp_path, lr_scheduler_kwargs={"num_cycles": 0.25}, cosine_min_lr_ratio=0.1)
    assert args.lr_scheduler_kwargs == {"num_cycles": 0.25, "min_lr_rate": 0.1}


def test_packing_note_says_when_a_step_holds_far_more_rows_than_unpacked(tmp_path):
    raw = {
        "base_model": "org/model",
        "adapter": "lora",
        "datasets": [{"path": str(QA)}],
        "micro_batch_size": 16,
    }
    packed = config.validate({**raw, "sample_packing": True})
    # 1,000 rows in 21 packed steps (~48 rows a step) vs 16 rows a step unpacked: 63 steps
    note = trainer_args.packing_note(packed, 1000, trainer_args.schedule(packed, 1000, batches_per_epoch=21))
    assert note == (
        " — sample_packing puts ~48 rows in an optimizer step (16 unpacked); the same config unpacked takes 63 steps"
        " (without sample_packing, batch_flattening, the default, keeps those steps without the padding)"
    )
    # at most twice the unpacked rows: nothing to say; and never without packing
    assert (
        trainer_args.packing_note(packed, 1000, trainer_args.schedule(packed, 1000, batches_per_epoch=40))
        == ""
    )
    plain = config.validate(raw)
    assert (
        trainer_args.packing_note(plain, 1000, trainer_args.schedule(plain, 1000, batches_per_epoch=21)) == ""
    )
