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
  (trl_steps.reference_without_copy drops the frozen copy TRL makes of a peft model's adapter).
- Generation: transformers' generate with the policy (adapter on). vLLM only on a GPU with vLLM installed.
- Logs per step (metrics.jsonl, W&B, the card): reward and reward_std, rewards/<func>/mean and /std,
  completions/mean_length, kl, entropy, loss.
"""

from __future__ import annotations

from finetune import methods, quiet
from finetune.config import Config
from finetune.errors import UserError
from finetune.train import rewards, trl_steps


def grpo_arguments(cfg: Config, args):
    """GRPOConfig: every value of the run's TrainingArguments and the `trl:` block (the table's trl_values)."""
    method = methods.of(cfg)
    pinned = trl_steps.pinned(
        args,
        remove_unused_columns=False,  # reference and source go to the reward functions
        use_vllm=bool(cfg.trl and cfg.trl.use_vllm),
        include_num_input_tokens_seen="no",  # TRL counts prompt + completion tokens itself
    )
    return trl_steps.trl_config(method.trl_config_class(), args, method.trl_values(cfg), pinned)


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


def build_trainer(
    cfg: Config, args, model, tokenizer, train_set, eval_set, callbacks: list, console=None, plan=None
):
    """GRPOTrainer around the model stage's peft model, with finetune's callbacks and reward functions (no
    evaluation set: the rewards are logged at every step)."""
    from trl import GRPOTrainer

    from finetune.train.trainer import EndsAtMaxSteps, LoraPlus

    class FinetuneGRPOTrainer(EndsAtMaxSteps, LoraPlus, trl_steps.FinetuneCard, GRPOTrainer):
        """GRPOTrainer with finetune's model card."""

        def batching_facts(self) -> dict:
            return {"batching": f"{self.num_generations} sampled completions per prompt, padded per batch"}

    check_vllm(cfg)
    grpo_args = grpo_arguments(cfg, args)
    if cfg.lora_dropout and console is not None:
        console.print(
            f"[yellow]note:[/] lora_dropout: {cfg.lora_dropout:g} stays on during GRPO's training forward; "
            "the sampling and reference passes run without it"
        )
    quiet.checkpointing_deprecation()  # TRL reads it at each reference forward
    funcs = rewards.reward_functions(
        cfg, tokenizer, list(train_set["reference"]), end_token_ids(model, tokenizer)
    )
    weights = trl_steps.trainable_weights(model)
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
    trl_steps.reference_without_copy(trainer.model, keep_copy=bool(cfg.lora_model_dir))
    trl_steps.restore_trainable_weights(trainer.model, weights)
    return trainer
