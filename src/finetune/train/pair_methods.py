"""rl: kto / orpo / simpo on the preference pairs finetune already reads (data/preference.py), through TRL.

    finetune train examples/dpo.yaml --set rl=orpo     # the DPO example's pairs, another objective

- `kto` (KTOTrainer): unpaired rows (a completion and a true/false label: TRL's and axolotl's KTO formats,
  data/unpaired.py), and pairs, each split by the data stage into two rows, the chosen answer desirable
  (label true) and the rejected one undesirable (label false); the reference is the base with the adapter switched off, as for DPO
  (TRL's frozen copy of a fresh adapter is dropped). TRL's KTO loss estimates its KL term from each batch's
  completions shifted by one, which needs batches in a fixed order: the rows are shuffled once with the seed
  here and read sequentially.
- `orpo` (TRL's experimental ORPOTrainer): SFT loss on the chosen answer + orpo_alpha x the odds-ratio term;
  no reference model.
- `simpo` (TRL's experimental CPOTrainer with loss_type simpo): length-normalized log-probability margin with
  target margin simpo_gamma, beta 2.0 by default (the SimPO paper's); cpo_alpha (default 0) adds an SFT term.

The rows go in tokenized (the data stage's prompt_ids/chosen_ids/rejected_ids, for KTO prompt_ids/
completion_ids/label, EOS included): TRL's own tokenization is skipped, so the token layout is the one DPO and
the reward model train on.
"""

from __future__ import annotations

import os
from dataclasses import fields

from finetune.config import Config
from finetune.train.preference import reference_without_copy, restore_trainable_weights


def arguments(cfg: Config, args):
    """KTOConfig, ORPOConfig or CPOConfig with every value of the run's TrainingArguments and the method's keys."""
    from transformers import TrainingArguments

    values = {f.name: getattr(args, f.name) for f in fields(TrainingArguments) if f.init}
    values.update(
        bf16=args.bf16,  # TRL's default turns bf16 on even on CPU
        gradient_checkpointing=args.gradient_checkpointing,  # adapter.wrap decided
        max_length=None,  # the data stage applied sequence_len and max_prompt_len
        disable_dropout=True,
        remove_unused_columns=False,
    )
    if cfg.rl == "kto":
        from trl import KTOConfig

        return KTOConfig(
            **values | {"train_sampling_strategy": "sequential"},  # the KL term pairs neighbours in a batch
            beta=cfg.rl_beta_or_default,
            desirable_weight=cfg.kto_desirable_weight or 1.0,
            undesirable_weight=cfg.kto_undesirable_weight or 1.0,
        )
    os.environ.setdefault(
        "TRL_EXPERIMENTAL_SILENCE", "1"
    )  # ORPO and CPO live in trl.experimental in TRL 1.16
    if cfg.rl == "orpo":
        from trl.experimental.orpo import ORPOConfig

        return ORPOConfig(**values, beta=cfg.orpo_alpha or 0.1)
    from trl.experimental.cpo import CPOConfig

    return CPOConfig(
        **values,
        loss_type="simpo",
        beta=cfg.rl_beta_or_default,
        simpo_gamma=cfg.simpo_gamma if cfg.simpo_gamma is not None else 0.5,
        cpo_alpha=cfg.cpo_alpha if cfg.cpo_alpha is not None else 0.0,
    )


# ---------------------------------------------------------------- data


def unpaired(table, seed: int):
    """KTO's rows as the data stage made them (prompt_ids, completion_ids, label: unpaired rows, and pairs
    split into a desirable and an undesirable row), shuffled once with the seed: the rows of a split pair
    are not neighbours, so the KL term (each batch's completions shifted by one) pairs unrelated rows."""
    if table is None:
        return None
    from finetune.data import no_datasets_bars

    with no_datasets_bars():
        return table.shuffle(seed=seed).flatten_indices()


def pair_columns(table):
    """The columns ORPO/CPO's tokenize_row would make: prompt, prompt + chosen and prompt + rejected, with labels
    that skip the prompt."""
    if table is None:
        return None

    def build(batch):
        out: dict[str, list] = {}
        for p, c, r in zip(batch["prompt_ids"], batch["chosen_ids"], batch["rejected_ids"], strict=True):
            for name, ids, labels in (("prompt_", p, None), ("chosen_", p + c, [-100] * len(p) + c),
                                      ("rejected_", p + r, [-100] * len(p) + r)):  # fmt: skip
                out.setdefault(f"{name}input_ids", []).append(ids)
                out.setdefault(f"{name}attention_mask", []).append([1] * len(ids))
                if labels is not None:
                    out.setdefault(f"{name}labels", []).append(labels)
        return out

    from finetune.data import no_datasets_bars

    with no_datasets_bars():
        return table.map(build, batched=True, remove_columns=table.column_names)


# ---------------------------------------------------------------- the trainers


def _trainer_class(rl: str):
    from finetune.train.trainer import EndsAtMaxSteps, LoraPlus

    if rl == "kto":
        from trl import KTOTrainer as base
    elif rl == "orpo":
        from trl.experimental.orpo import ORPOTrainer as base
    else:
        from trl.experimental.cpo import CPOTrainer as base

    class FinetunePairTrainer(EndsAtMaxSteps, LoraPlus, base):
        """TRL's trainer fed finetune's tokenized rows, with finetune's model card."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            """KTO: the unpaired rows arrive tokenized; only the KL completions (each batch's completions shifted
            by one, as TRL builds them) are added."""
            if "completion_ids" not in dataset.column_names:
                return super()._prepare_dataset(dataset, processing_class, args, dataset_name)
            if self.calculate_KL:
                size = args.per_device_train_batch_size

                def shifted(batch):
                    return {"KL_completion_ids": [batch["completion_ids"][-1]] + batch["completion_ids"][:-1]}

                dataset = dataset.map(shifted, batched=True, batch_size=size)
            return dataset

        def tokenize_row(self, feature, model=None):
            """ORPO / CPO: the rows arrive tokenized (pair_columns); nothing to add."""
            if "chosen_input_ids" in feature:
                return {}
            return super().tokenize_row(feature, model)

        def create_model_card(self, *args, **kwargs):
            """TRL writes its own README.md into output_dir at every checkpoint; finetune's card replaces it."""

        def batching_facts(self) -> dict:
            what = (
                "unpaired rows (KTO), padded per batch"
                if rl == "kto"
                else "preference pairs, padded per batch"
            )
            return {"batching": what}

    return FinetunePairTrainer


def build_trainer(cfg: Config, args, model, tokenizer, train_set, eval_set, callbacks: list, console=None):
    """The KTO / ORPO / CPO(SimPO) trainer around the model stage's peft model, with finetune's callbacks."""
    import warnings

    warnings.filterwarnings(
        "ignore", message=r".*`is_gradient_checkpointing` is deprecated", category=FutureWarning
    )
    if cfg.lora_dropout and console is not None:
        console.print(
            f"[yellow]note:[/] lora_dropout: {cfg.lora_dropout:g} is switched off for {cfg.rl} training (TRL's "
            "disable_dropout)"
        )
    trl_args = arguments(cfg, args)
    if cfg.rl == "kto":
        train, evals = unpaired(train_set, cfg.seed), unpaired(eval_set, cfg.seed)
    else:
        train, evals = pair_columns(train_set), pair_columns(eval_set)
    weights = {name: p.data for name, p in model.named_parameters() if p.requires_grad}  # references, no copy
    extra = {"ref_model": None} if cfg.rl == "kto" else {}
    trainer = _trainer_class(cfg.rl)(
        model=model, args=trl_args, train_dataset=train, eval_dataset=evals, processing_class=tokenizer,
        callbacks=callbacks, **extra,
    )  # fmt: skip
    if cfg.rl == "kto":
        reference_without_copy(trainer.model, keep_copy=bool(cfg.lora_model_dir))
    restore_trainable_weights(trainer.model, weights)
    return trainer
