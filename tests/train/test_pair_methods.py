"""rl: kto / orpo / simpo through `finetune train` on the preference pairs finetune reads (and KTO on unpaired rows):
each trains a few steps on the tiny model, logs its metrics, resumes from a checkpoint, merges and cards.
Mechanics, not quality."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import one_thread_run, sentiment_rows
from finetune import config

PAIR_TYPE = {"field_prompt": "context", "field_chosen": "target", "field_rejected": "wrong"}
LABELS = ("negative", "neutral", "positive")
METRICS = {  # a metric each method logs at every training step
    "kto": "kl",
    "orpo": "log_odds_ratio",
    "simpo": "rewards/margins",
}
CARD = {"kto": "trained with KTO", "orpo": "trained with ORPO", "simpo": "trained with SimPO"}


def pair_cfg(base_model, root: Path, rl: str, **extra) -> config.Config:
    rows = [{**r, "wrong": LABELS[(LABELS.index(r["target"]) + 1) % 3]} for r in sentiment_rows(24)]
    data = root / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return config.validate({
        "base_model": str(base_model), "adapter": "lora", "lora_r": 8, "lora_alpha": 16, "lora_target_linear": True,
        "rl": rl, "datasets": [{"path": str(data), "type": PAIR_TYPE}], "sequence_len": 128,
        "dataset_prepared_path": str(root / "prepared"), "output_dir": str(root / "out"), "micro_batch_size": 4,
        "learning_rate": 1e-3, "lr_scheduler": "constant", "logging_steps": 1, "seed": 5, "max_steps": 2,
        "save_steps": 2, **extra,
    })  # fmt: skip


def history(out: Path) -> list[dict]:
    return json.loads((out / "trainer_state.json").read_text())["log_history"]


@pytest.mark.parametrize("rl", ["kto", "orpo", "simpo"])
def test_method_trains_resumes_merges_and_cards(rl, tiny_model_dir, tmp_path, capsys):
    from huggingface_hub import ModelCard
    from safetensors.torch import load_file

    from finetune.outputs import merge

    cfg = pair_cfg(tiny_model_dir, tmp_path, rl)
    out = one_thread_run(cfg)
    printed = capsys.readouterr().err  # TRL's trainer batches the pairs, not the SFT plan
    assert f"batching: {'unpaired rows (KTO)' if rl == 'kto' else 'preference pairs'}" in printed
    assert "random rows a batch" not in printed
    first = [e for e in history(out) if METRICS[rl] in e]
    assert [e["step"] for e in first] == [1, 2]
    weights = load_file(out / "adapter_model.safetensors")
    assert any(float(w.abs().max()) > 0 for k, w in weights.items() if "lora_B" in k)  # the adapter moved

    one_thread_run(cfg.model_copy(update={"max_steps": 3}), resume=True)
    resumed = [e for e in history(out) if METRICS[rl] in e]
    assert [e["step"] for e in resumed] == [1, 2, 3]
    assert resumed[:2] == first  # steps 1-2 come from checkpoint-2

    card = ModelCard.load(out / "README.md")
    assert {rl, "trl"} <= set(card.data.tags) and CARD[rl] in card.text
    if rl == "kto":  # the pairs were split by the data stage, and the card says so
        assert (
            "each pair's answers as a desirable and an undesirable row (24 desirable, 24 undesirable"
            in card.text
        )
    assert merge.merge_command(out, tmp_path / "merged", dtype="fp32") < 1e-4
    assert CARD[rl] + " merged in" in (tmp_path / "merged" / "README.md").read_text()


def test_kto_rows_are_unpaired_and_shuffled_once():
    from datasets import Dataset
    from datasets.table import InMemoryTable

    from finetune.data import unpaired
    from finetune.train import kto_orpo_simpo

    pairs = Dataset.from_dict({"prompt_ids": [[1, 2], [1, 3]], "chosen_ids": [[4, 0], [5, 0]],
                               "rejected_ids": [[6, 0], [7, 0]]})  # fmt: skip
    totals = {"pairs_split": 0, "rows_kept": 2}
    table = unpaired.from_pairs(pairs.data.table, totals)  # the data stage splits pairs for rl: kto
    assert totals == {"pairs_split": 2, "rows_kept": 4}
    rows = kto_orpo_simpo.unpaired(Dataset(InMemoryTable(table)), seed=0)  # the trainer shuffles them once
    got = sorted((r["prompt_ids"], r["completion_ids"], r["label"]) for r in rows)
    assert got == [
        ([1, 2], [4, 0], True),
        ([1, 2], [6, 0], False),
        ([1, 3], [5, 0], True),
        ([1, 3], [7, 0], False),
    ]
    cols = kto_orpo_simpo.pair_columns(pairs)
    assert cols[0]["chosen_input_ids"] == [1, 2, 4, 0] and cols[0]["chosen_labels"] == [-100, -100, 4, 0]
    assert cols[1]["rejected_input_ids"] == [1, 3, 7, 0] and cols[1]["prompt_input_ids"] == [1, 3]


@pytest.mark.parametrize("rl", ["kto", "dpo"])
def test_reference_is_the_base_with_the_adapter_off_and_no_copy(rl, tiny_model_dir, tmp_path):
    """The trainer finetune builds for rl: kto (kto_orpo_simpo) and rl: dpo (preference.py) scores its reference
    with the adapter switched off: the base's own log-probabilities, whatever the adapter has learnt, and no
    frozen copy of the adapter is kept (TRL adds a "ref" adapter for a peft model; reference_without_copy drops
    it). ORPO and SimPO have no reference model."""
    import torch
    from transformers import AutoModelForCausalLM

    from finetune import data
    from finetune import model as model_module
    from finetune.data.tokenizer import count_new_tokens, load_tokenizer
    from finetune.train import arguments as trainer_args
    from finetune.train import kto_orpo_simpo, preference

    cfg = pair_cfg(tiny_model_dir, tmp_path, rl)
    tokenizer = load_tokenizer(cfg)
    prepared = data.prepare(cfg, tokenizer)
    loaded = model_module.load(cfg, tokenizer, count_new_tokens(cfg, tokenizer))
    prec = model_module.precision(cfg)
    args, _ = trainer_args.training_arguments(cfg, prec, len(prepared.train), False, cfg.output_dir, [])
    build = kto_orpo_simpo.build_trainer if rl == "kto" else preference.build_trainer
    trainer = build(cfg, args, loaded.model, tokenizer, prepared.train, None, [])
    assert trainer.ref_model is None and sorted(trainer.model.peft_config) == ["default"]  # no copy

    torch.manual_seed(0)
    with torch.no_grad():  # the adapter as if trained: the policy is no longer the base
        for name, param in trainer.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    batch = next(iter(trainer.get_train_dataloader()))
    scored = trainer.compute_ref_log_probs(
        trainer.model, batch
    )  # KTO: (rows, KL rows); DPO: (chosen, rejected)
    reference = scored[0] if rl == "kto" else torch.cat(scored)

    def completion_logps(model) -> torch.Tensor:
        with torch.no_grad():
            logits = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits.float()
        labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)[:, 1:]
        logps = (
            torch.log_softmax(logits[:, :-1], -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        )
        return (logps * (labels != -100)).sum(-1)

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    torch.testing.assert_close(reference.float(), completion_logps(base), rtol=0, atol=1e-4)
    policy = completion_logps(trainer.model)
    assert (policy - reference).abs().max() > 0.1  # the adapter is on for the policy, off for the reference


def test_method_keys_are_read_and_refused_elsewhere(tiny_model_dir, tmp_path):
    from transformers import TrainingArguments

    from finetune.train import kto_orpo_simpo

    base = TrainingArguments(str(tmp_path / "o"), learning_rate=2e-4, bf16=False)
    kto = pair_cfg(tiny_model_dir, tmp_path, "kto", rl_beta=0.3, kto_undesirable_weight=1.5)
    args = kto_orpo_simpo.arguments(kto, base)
    assert (args.beta, args.desirable_weight, args.undesirable_weight) == (0.3, 1.0, 1.5)
    assert args.train_sampling_strategy == "sequential" and args.learning_rate == 2e-4 and args.bf16 is False
    simpo = kto_orpo_simpo.arguments(pair_cfg(tiny_model_dir, tmp_path, "simpo", simpo_gamma=1.0), base)
    assert (simpo.loss_type, simpo.beta, simpo.simpo_gamma, simpo.cpo_alpha) == ("simpo", 2.0, 1.0, 0.0)
    orpo = kto_orpo_simpo.arguments(pair_cfg(tiny_model_dir, tmp_path, "orpo", orpo_alpha=0.2), base)
    assert orpo.beta == 0.2
    with pytest.raises(config.ConfigError) as exc:
        pair_cfg(tiny_model_dir, tmp_path, "dpo", simpo_gamma=1.0, orpo_alpha=0.1)
    assert [p.split(": ", 1)[1] for p in exc.value.problems] == [
        "orpo_alpha: only used by rl: orpo: set rl: orpo or remove it",
        "simpo_gamma: only used by rl: simpo: set rl: simpo or remove it",
    ]


def unpaired_rows(layout: str) -> list[dict]:
    """Sentiment rows with one answer each, right (desirable) or wrong (undesirable), in turn."""
    rows = []
    for i, r in enumerate(sentiment_rows(24)):
        right = i % 2 == 0
        answer = r["target"] if right else LABELS[(LABELS.index(r["target"]) + 1) % 3]
        if layout == "trl":  # TRL's standard unpaired format, plain text
            rows.append({"prompt": r["context"], "completion": f" {answer}", "label": right})
        else:  # axolotl's llama3.ultra: prompt, completion, label, optional system
            rows.append(
                {
                    "system": "Answer in one word.",
                    "prompt": r["context"],
                    "completion": answer,
                    "label": right,
                }
            )
    return rows


@pytest.mark.parametrize("layout", ["trl", "llama3.ultra"])
def test_kto_on_unpaired_rows_trains_resumes_merges_and_cards(layout, tiny_model_dir, tmp_path):
    from huggingface_hub import ModelCard

    from finetune.outputs import merge

    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in unpaired_rows(layout)))
    entry = {"path": str(data)} if layout == "trl" else {"path": str(data), "type": layout}
    cfg = pair_cfg(tiny_model_dir, tmp_path, "kto", datasets=[entry])
    out = one_thread_run(cfg)
    first = [e for e in history(out) if "kl" in e]
    assert [e["step"] for e in first] == [1, 2]
    results = json.loads((out / "all_results.json").read_text())["data"]
    assert (results["desirable"], results["undesirable"], results["unpaired_rows"]) == (12, 12, 24)
    assert results.get("pairs_split", 0) == 0

    one_thread_run(cfg.model_copy(update={"max_steps": 3}), resume=True)
    resumed = [e for e in history(out) if "kl" in e]
    assert [e["step"] for e in resumed] == [1, 2, 3] and resumed[:2] == first

    card = ModelCard.load(out / "README.md")
    assert (
        "unpaired rows, each answer labelled desirable or undesirable (12 desirable, 12 undesirable"
        in card.text
    )
    assert "each pair's answers" not in card.text and "on unpaired rows" in card.text
    assert merge.merge_command(out, tmp_path / "merged", dtype="fp32") < 1e-4
