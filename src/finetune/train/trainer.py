"""The HF Trainer as finetune runs it: the batching plan's dataloaders, honest token counts, offloading.

`FinetuneTrainer` overrides only what the batching needs (transformers documents these as the methods to
override):

- `get_train_dataloader` / `get_eval_dataloader`: token-budget batches from `batching.TokenBatchSampler`
  when the plan has one. The sampler yields the global batch list laid out for accelerate's
  `BatchSamplerShard`, so a multi-process run deals batch k·W + r to rank r.
- `_track_num_input_tokens`: counts real tokens (attention mask; every token of a padding-free row, where a
  pad-id comparison would miss EOS when pad == EOS) and the padded slots, so the padding fraction is known.
- `log`: each training log line gets `padding_fraction` (of this session's tokens so far).
- `compute_loss`: under `speedups.offload_activations` when `gradient_checkpointing: offload` runs on a GPU.
- `_run_epoch` (`EndsAtMaxSteps`, shared with the TRL trainers): nothing to train when resumed at max_steps.
- `create_optimizer` (`LoraPlus`, shared with the TRL trainers in preference.py, kto_orpo_simpo.py and
  grpo.py): LoRA+ parameter groups when `loraplus_lr_ratio` is set.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch.utils.data import DataLoader
from transformers import Trainer, TrainerCallback

from finetune.model import speedups, unfrozen
from finetune.train import fsdp


class EpochToSampler(TrainerCallback):
    """Tell the sampler which epoch starts, from the step count (the Trainer's own `set_epoch` does not reach
    a batch sampler behind accelerate's skip + shard wrappers on a multi-process mid-epoch resume)."""

    def __init__(self, sampler, batches_per_epoch: int, accumulation: int):
        self.sampler = sampler
        self.steps_per_epoch = max(1, -(-batches_per_epoch // accumulation))

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.sampler.set_epoch(state.global_step // self.steps_per_epoch)


class EndsAtMaxSteps:
    """Trainer mixin: a run resumed from a checkpoint already at (or past) max_steps trains nothing. The HF
    Trainer checks max_steps only after an optimizer step, so when max_steps ends mid-epoch (max_steps set, or
    a fraction of an epoch) a resumed epoch ran one more step: checkpoint-3 of 3 ended at global_step 4."""

    def _run_epoch(self, *args, **kwargs):
        if 0 < self.state.max_steps <= self.state.global_step:
            self.control.should_training_stop = True
            return None
        return super()._run_epoch(*args, **kwargs)


class LoraPlus:
    """Trainer mixin: with `loraplus` = (lr ratio, embedding lr or None), the optimizer is peft's LoRA+ one —
    the Trainer's own optimizer class and arguments (optim, betas, eps, weight decay), with the adapter's B
    matrices at ratio x the learning rate. The LR schedule scales every group alike."""

    loraplus: tuple[float, float | None] | None = None

    def create_optimizer(self, model=None):
        if self.loraplus is not None and self.optimizer is None:
            from peft.optimizers import create_loraplus_optimizer

            opt_model = self.model if model is None else model
            cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(self.args, opt_model)
            ratio, embedding_lr = self.loraplus
            if embedding_lr is not None:
                kwargs["loraplus_lr_embedding"] = embedding_lr
            self.optimizer = create_loraplus_optimizer(
                opt_model,
                cls,
                loraplus_lr_ratio=ratio,
                loraplus_weight_decay=self.args.weight_decay,
                **kwargs,
            )
        return super().create_optimizer(model)


MODEL_INPUTS = ("input_ids", "attention_mask", "labels")


class FinetuneTrainer(EndsAtMaxSteps, LoraPlus, Trainer):
    def __init__(self, *args, batch_plan=None, offload: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.batch_plan = batch_plan
        self.offload = offload
        self.real_tokens = 0  # this session's non-pad tokens and padded slots, summed over processes
        self.slot_tokens = 0
        sampler = batch_plan.train_sampler if batch_plan is not None else None
        if sampler is not None:
            self.add_callback(
                EpochToSampler(sampler, sampler.batches_per_rank, self.args.gradient_accumulation_steps)
            )

    # ---------------------------------------------------------------- FSDP2

    def create_accelerator_and_postprocess(self) -> None:
        super().create_accelerator_and_postprocess()
        fsdp.enable_on_cpu(self)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Under FSDP the adapter is gathered whole and saved by the main process (checkpoints too: the
        Trainer saves its sharded model and optimizer state beside it for resuming)."""
        if not self.is_fsdp_enabled:
            super().save_model(output_dir, _internal_call)
            if self.args.should_save and hasattr(self.model, "peft_config"):  # unfrozen_parameters
                unfrozen.save(self.accelerator.unwrap_model(self.model), output_dir or self.args.output_dir)
            return
        output_dir = output_dir or self.args.output_dir
        model = self.accelerator.unwrap_model(self.model)
        state = fsdp.full_adapter_state(model)  # every process: the gathers are collectives
        if self.args.should_save:
            model.save_pretrained(output_dir, state_dict=state)
            if self.processing_class is not None:
                self.processing_class.save_pretrained(output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """The Trainer loads a peft checkpoint's adapter; the weights that train beside it come back here."""
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        target = self.model if model is None else model
        if hasattr(target, "peft_config"):
            unfrozen.load_into_peft(target, resume_from_checkpoint)

    def _load_best_model(self) -> None:
        """load_best_model_at_end: the Trainer reloads the best checkpoint's adapter; its unfrozen weights too."""
        super()._load_best_model()
        if hasattr(self.model, "peft_config"):
            unfrozen.load_into_peft(self.model, self.state.best_model_checkpoint)

    # ---------------------------------------------------------------- dataloaders

    def get_train_dataloader(self) -> DataLoader:
        plan = self.batch_plan
        if plan is None or plan.train_sampler is None:
            return super().get_train_dataloader()
        return self._batched(self.train_dataset, plan.train_sampler, self.data_collator)

    def get_eval_dataloader(self, eval_dataset=None) -> DataLoader:
        plan = self.batch_plan
        if plan is None or plan.eval_sampler is None or isinstance(eval_dataset, str):
            return super().get_eval_dataloader(eval_dataset)
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if len(dataset) != len(plan.eval_sampler.lengths):  # another eval set than the planned one
            return super().get_eval_dataloader(eval_dataset)
        return self._batched(dataset, plan.eval_sampler, plan.eval_collator)

    def _batched(self, dataset, sampler, collator) -> DataLoader:
        if sampler.world_size != self.accelerator.num_processes:
            raise RuntimeError(
                f"batch sampler planned for {sampler.world_size} processes, running on "
                f"{self.accelerator.num_processes}"
            )
        # the model's inputs only (what the Trainer's own loaders keep): the data stage writes no other columns
        # today, and a future one must not reach the collator and the forward
        dataset = dataset.select_columns([c for c in MODEL_INPUTS if c in dataset.column_names])
        loader = DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
        )
        return self.accelerator.prepare(loader)

    # ---------------------------------------------------------------- token accounting

    def _track_num_input_tokens(self, inputs):
        ids = inputs["input_ids"]
        mask = inputs.get("attention_mask")
        real = mask.sum() if mask is not None else torch.tensor(ids.numel())  # padding-free: all real
        counts = torch.stack([real.to(torch.int64).cpu(), torch.tensor(ids.numel(), dtype=torch.int64)])
        counts = self.accelerator.gather(counts.to(self.args.device)).view(-1, 2).sum(0).tolist()
        self.state.num_input_tokens_seen += counts[0]
        self.real_tokens += counts[0]
        self.slot_tokens += counts[1]

    def padding_fraction(self) -> float | None:
        return round(1 - self.real_tokens / self.slot_tokens, 4) if self.slot_tokens else None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self.slot_tokens:
            logs["padding_fraction"] = self.padding_fraction()
        super().log(logs, start_time)

    def batching_facts(self) -> dict:
        """What the run summary and results say about the batching."""
        plan = self.batch_plan
        out = {"batching": plan.strategy if plan is not None else "random"}
        if plan is not None and plan.token_budget:
            out["batch_token_budget"] = plan.token_budget
            sampler = plan.train_sampler
            if sampler is not None:  # a step is a token budget, not a row count: say what it holds
                accumulation = self.args.gradient_accumulation_steps
                steps_per_epoch = max(1, -(-sampler.batches_per_rank // accumulation))
                out["total_train_batch_tokens"] = plan.token_budget * accumulation * sampler.world_size
                out["mean_rows_per_step"] = round(len(sampler.lengths) / steps_per_epoch, 1)
        if self.slot_tokens:
            out["padding_fraction"] = self.padding_fraction()
            out["padded_tokens"] = self.slot_tokens - self.real_tokens
        return out

    # ---------------------------------------------------------------- activation offloading

    def compute_loss(self, model, inputs, *args, **kwargs):
        context = nullcontext()
        if self.offload and model.training:
            hidden = getattr(self.model.config, "hidden_size", None) or 0
            context = speedups.offload_activations(hidden, device_type=self.args.device.type)
        with context:
            return super().compute_loss(model, inputs, *args, **kwargs)
