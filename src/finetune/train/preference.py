"""Preference training: TRL's RewardTrainer (reward_model: true) and DPOTrainer (rl: dpo), built from the same
config, data, model, callbacks and outputs as SFT — `train.run` only swaps the arguments and the Trainer.

    finetune train examples/reward.yaml     # Bradley-Terry reward model: base + score head + LoRA
    finetune train examples/dpo.yaml        # DPO: the adapter is the policy, the base is the reference

What finetune decides here, and why (TRL 1.16, FACTS.md):

- Arguments: the TrainingArguments `train/arguments.py` maps from every key, copied into RewardConfig /
  DPOConfig, with TRL's defaults that differ from HF's pinned to what the config says: bf16 (TRL turns it on
  by default, even on CPU), gradient checkpointing (adapter.wrap already set it up), and no max_length (the
  data stage applied sequence_len and max_prompt_len, see data/preference.py); the shared steps are train/trl_steps.py.
- Data: the cached (prompt_ids, chosen_ids, rejected_ids) tables go in tokenized. The reward model scores
  prompt + answer; DPOTrainer would re-tokenize from text, so `_prepare_dataset` is skipped for them.
- Reference model (DPO): the base with the adapter switched off — a fresh LoRA adapter starts as exactly the
  base, so no second copy of the model is held. (TRL copies the adapter as a frozen "ref" adapter; that copy is
  only kept when training continues from lora_model_dir, whose adapter is then the reference.)
- Adapter precision: on a quantized base TRL casts the trainable weights to bf16; the model stage's tensors are
  put back (fp32, as in SFT), so small updates are not rounded away on CPU runs.
"""

from __future__ import annotations

from finetune import methods, quiet
from finetune.config import Config
from finetune.data.report import no_datasets_bars
from finetune.train import trl_steps


def trl_arguments(cfg: Config, args, notes: list[str]):
    """RewardConfig or DPOConfig (the method table's trl_config) with every value of the SFT TrainingArguments
    plus the method's settings (its trl_values); TRL defaults that differ from HF's are pinned to what the
    config says."""
    method = methods.of(cfg)
    pinned = trl_steps.pinned(
        args,
        max_length=None,  # lengths were settled by the data stage (sequence_len, max_prompt_len)
        disable_dropout=True,
    )
    if cfg.lora_dropout:
        notes.append(
            f"lora_dropout: {cfg.lora_dropout:g} is switched off for {method.name} training (TRL's "
            "disable_dropout): both answers of a pair must be scored by the same network"
        )
    return trl_steps.trl_config(method.trl_config_class(), args, method.trl_values(cfg), pinned)


# ---------------------------------------------------------------- data


def reward_columns(table):
    """The reward model scores whole sequences: chosen_ids = prompt + chosen, rejected_ids = prompt + rejected."""
    if table is None:
        return None

    def join(batch):
        prompts = batch["prompt_ids"]
        return {
            "chosen_ids": [p + c for p, c in zip(prompts, batch["chosen_ids"], strict=True)],
            "rejected_ids": [p + r for p, r in zip(prompts, batch["rejected_ids"], strict=True)],
        }

    with no_datasets_bars():  # a progress bar for an in-memory join is noise
        return table.map(join, batched=True, remove_columns=["prompt_ids"])


# ---------------------------------------------------------------- the trainers


def _trainer_classes():
    from trl import DPOTrainer, RewardTrainer

    from finetune.train.trainer import EndsAtMaxSteps, LoraPlus

    class FinetuneRewardTrainer(EndsAtMaxSteps, LoraPlus, trl_steps.FinetuneCard, RewardTrainer):
        """RewardTrainer whose model card is finetune's (outputs/card), written from the run's files."""

        def batching_facts(self) -> dict:
            """What train.run_facts records about batching: each pair's chosen and rejected, padded per batch."""
            return {"batching": methods.REWARD.batching}

    class FinetuneDPOTrainer(EndsAtMaxSteps, LoraPlus, trl_steps.FinetuneCard, DPOTrainer):
        """DPOTrainer fed finetune's tokenized pairs, with finetune's model card."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            """TRL 1.16 re-tokenizes every dataset from prompt/chosen/rejected text (RewardTrainer accepts ids);
            the data stage already tokenized, filtered and cached the pairs, so those pass through."""
            if {"prompt_ids", "chosen_ids", "rejected_ids"} <= set(dataset.column_names):
                return dataset
            return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

        def batching_facts(self) -> dict:
            """What train.run_facts records about batching: each pair's chosen and rejected, padded per batch."""
            return {"batching": methods.DPO.batching}

    return FinetuneRewardTrainer, FinetuneDPOTrainer


def build_trainer(
    cfg: Config, args, model, tokenizer, train_set, eval_set, callbacks: list, console=None, plan=None
):
    """RewardTrainer (a method with a score head) or DPOTrainer around the model stage's peft model, with
    finetune's callbacks. `args` are the run's TrainingArguments; each replacement is printed as a note."""
    notes: list[str] = []
    args = trl_arguments(cfg, args, notes)
    for note in notes:
        if console is not None:
            console.print(f"[yellow]note:[/] {note}")
    quiet.checkpointing_deprecation()  # TRL reads it at each reference forward
    reward_cls, dpo_cls = _trainer_classes()
    weights = trl_steps.trainable_weights(model)
    common = {"args": args, "processing_class": tokenizer, "callbacks": callbacks}
    if methods.of(cfg).score_head:
        trainer = reward_cls(
            model=model,
            train_dataset=reward_columns(train_set),
            eval_dataset=reward_columns(eval_set),
            **common,
        )
    else:
        trainer = dpo_cls(
            model=model, ref_model=None, train_dataset=train_set, eval_dataset=eval_set, **common
        )
        trl_steps.reference_without_copy(trainer.model, keep_copy=bool(cfg.lora_model_dir))
    trl_steps.restore_trainable_weights(trainer.model, weights)
    return trainer


# ---------------------------------------------------------------- scoring with a reward model


def score(model, pad_token_id: int, sequences: list[list[int]], batch_size: int = 16) -> list[float]:
    """Scalar rewards of token sequences (as training laid them out: prompt_ids + answer ids, EOS included)."""
    import torch

    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(sequences), batch_size):
            chunk = sequences[i : i + batch_size]
            width = max(len(s) for s in chunk)
            ids = torch.tensor([s + [pad_token_id] * (width - len(s)) for s in chunk])
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in chunk])
            logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits
            out += logits.float().squeeze(-1).cpu().tolist()
    return out
