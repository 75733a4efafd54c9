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

from finetune import methods, quiet
from finetune.config import Config
from finetune.data.report import no_datasets_bars
from finetune.train import trl_steps


def arguments(cfg: Config, args):
    """KTOConfig, ORPOConfig or CPOConfig (the method table's trl_config) with every value of the run's
    TrainingArguments and the method's keys (its trl_values)."""
    os.environ.setdefault(
        "TRL_EXPERIMENTAL_SILENCE", "1"
    )  # ORPO and CPO live in trl.experimental in TRL 1.16
    method = methods.of(cfg)
    pinned = trl_steps.pinned(
        args,
        max_length=None,  # the data stage applied sequence_len and max_prompt_len
        disable_dropout=True,
        remove_unused_columns=False,
    )
    return trl_steps.trl_config(method.trl_config_class(), args, method.trl_values(cfg), pinned)


# ---------------------------------------------------------------- data


def unpaired(table, seed: int):
    """KTO's rows as the data stage made them (prompt_ids, completion_ids, label: unpaired rows, and pairs
    split into a desirable and an undesirable row), shuffled once with the seed: the rows of a split pair
    are not neighbours, so the KL term (each batch's completions shifted by one) pairs unrelated rows."""
    if table is None:
        return None
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

    with no_datasets_bars():
        return table.map(build, batched=True, remove_columns=table.column_names)


# ---------------------------------------------------------------- the trainers


def _trainer_class(method: methods.Method):
    from finetune.train.trainer import EndsAtMaxSteps, LoraPlus

    if method.rows == "unpaired":
        from trl import KTOTrainer as base
    elif method is methods.ORPO:
        from trl.experimental.orpo import ORPOTrainer as base
    else:
        from trl.experimental.cpo import CPOTrainer as base

    class FinetunePairTrainer(EndsAtMaxSteps, LoraPlus, trl_steps.FinetuneCard, base):
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

        def batching_facts(self) -> dict:
            return {"batching": method.batching}

    return FinetunePairTrainer


def build_trainer(
    cfg: Config, args, model, tokenizer, train_set, eval_set, callbacks: list, console=None, plan=None
):
    """The KTO / ORPO / CPO(SimPO) trainer around the model stage's peft model, with finetune's callbacks."""
    method = methods.of(cfg)
    quiet.checkpointing_deprecation()  # TRL reads it at each reference forward
    if cfg.lora_dropout and console is not None:
        console.print(
            f"[yellow]note:[/] lora_dropout: {cfg.lora_dropout:g} is switched off for {method.name} training "
            "(TRL's disable_dropout)"
        )
    trl_args = arguments(cfg, args)
    kto = method.rows == "unpaired"  # KTO's rows, shuffled once; the others' pairs in ORPO/CPO's columns
    if kto:
        train, evals = unpaired(train_set, cfg.seed), unpaired(eval_set, cfg.seed)
    else:
        train, evals = pair_columns(train_set), pair_columns(eval_set)
    weights = trl_steps.trainable_weights(model)
    extra = {"ref_model": None} if kto else {}
    trainer = _trainer_class(method)(
        model=model, args=trl_args, train_dataset=train, eval_dataset=evals, processing_class=tokenizer,
        callbacks=callbacks, **extra,
    )  # fmt: skip
    if kto:
        trl_steps.reference_without_copy(trainer.model, keep_copy=bool(cfg.lora_model_dir))
    trl_steps.restore_trainable_weights(trainer.model, weights)
    return trainer
