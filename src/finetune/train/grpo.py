"""`rl: grpo`: TRL's GRPOTrainer on the prompts of the SFT datasets, rewarded by trl.reward_funcs.

    finetune train examples/grpo.yaml      # sample, score, push the adapter toward the better completions

Built from the same config, model, callbacks and outputs as SFT and DPO; `train.run` swaps the arguments and
the Trainer. What finetune decides here, and why (TRL 1.16):

- Arguments: the run's TrainingArguments copied into GRPOConfig, TRL defaults that differ from HF's pinned
  to what the config says (bf16, gradient checkpointing), plus the `trl:` block. finetune's defaults where
  TRL's do not suit a LoRA run on a small machine: num_generations 4 (TRL: 8), max_completion_length 64
  (TRL: 512), beta 0.04 (TRL 1.16: 0, which skips the reference and its KL; the GRPO paper's value keeps the
  policy near the base and logs the KL).
- micro_batch_size counts completions, as in TRL: a step sees micro_batch_size x gradient_accumulation_steps
  / num_generations prompts.
- Reference model: the base with the adapter switched off (no second copy), as for DPO
  (preference.reference_without_copy drops the frozen copy TRL makes of a peft model's adapter).
- Generation: transformers' generate with the policy (adapter on). vLLM only on a GPU with vLLM installed.
- Logs per step (metrics.jsonl, W&B, the card): reward and reward_std, rewards/<func>/mean and /std,
  completions/mean_length, kl, entropy, loss.
"""

from __future__ import annotations

import warnings
from dataclasses import fields

from finetune.config import Config
from finetune.config.trl_keys import grpo_settings
from finetune.errors import UserError


def grpo_arguments(cfg: Config, args):
    from transformers import TrainingArguments
    from trl import GRPOConfig

    values = {f.name: getattr(args, f.name) for f in fields(TrainingArguments) if f.init}
    pinned = {
        "bf16": args.bf16,  # TRL's default turns bf16 on even on CPU
        "gradient_checkpointing": args.gradient_checkpointing,  # adapter.wrap decided
        "remove_unused_columns": False,  # reference and source go to the reward functions
        "use_vllm": bool(cfg.trl and cfg.trl.use_vllm),
        "include_num_input_tokens_seen": "no",  # TRL counts prompt + completion tokens itself
    }
    return GRPOConfig(**{**values, **pinned, **grpo_settings(cfg.trl)})


def check_vllm(cfg: Config) -> None:
    """use_vllm: true needs a GPU and vLLM; refused in one line otherwise, before the model loads."""
    if not (cfg.trl and cfg.trl.use_vllm):
        return
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        raise UserError(
            "trl.use_vllm: vLLM generation needs a GPU (none here): set it to false to generate with transformers"
        )
    if importlib.util.find_spec("vllm") is None:
        raise UserError("trl.use_vllm: vLLM is not installed (pip install vllm), or set it to false")


def end_token_ids(model, tokenizer) -> set[int]:
    """Tokens that end a completion: the tokenizer's EOS and the generation config's eos_token_id(s)."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    gen = getattr(model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None)
    ids |= set(eos) if isinstance(eos, list) else {eos} if eos is not None else set()
    return ids


def build_trainer(cfg: Config, args, model, tokenizer, train_set, callbacks: list, console=None):
    """GRPOTrainer around the model stage's peft model, with finetune's callbacks and reward functions."""
    from trl import GRPOTrainer

    from finetune.train import rewards
    from finetune.train.preference import reference_without_copy, restore_trainable_weights
    from finetune.train.trainer import EndsAtMaxSteps, LoraPlus

    class FinetuneGRPOTrainer(EndsAtMaxSteps, LoraPlus, GRPOTrainer):
        """GRPOTrainer with finetune's model card."""

        def create_model_card(self, *args, **kwargs):
            """TRL writes its own README.md into output_dir at every checkpoint; finetune's card replaces it."""

        def batching_facts(self) -> dict:
            return {"batching": f"{self.num_generations} sampled completions per prompt, padded per batch"}

    check_vllm(cfg)
    grpo_args = grpo_arguments(cfg, args)
    if cfg.lora_dropout and console is not None:
        console.print(
            f"[yellow]note:[/] lora_dropout: {cfg.lora_dropout:g} stays on during GRPO's training forward; "
            "the sampling and reference passes run without it"
        )
    warnings.filterwarnings(
        "ignore", message=r".*`is_gradient_checkpointing` is deprecated", category=FutureWarning
    )
    funcs = rewards.reward_functions(
        cfg, tokenizer, list(train_set["reference"]), end_token_ids(model, tokenizer)
    )
    weights = {name: p.data for name, p in model.named_parameters() if p.requires_grad}  # references, no copy
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    trainer = FinetuneGRPOTrainer(
        model=model,
        reward_funcs=funcs,
        args=grpo_args,
        train_dataset=train_set,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    reference_without_copy(trainer.model, keep_copy=bool(cfg.lora_model_dir))
    restore_trainable_weights(trainer.model, weights)
    return trainer
