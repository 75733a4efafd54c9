"""Reward models (reward_model: true): a score head + LoRA on a 4-bit tiny base, trained with TRL's RewardTrainer
on FinLoRA sentiment pairs (the right label chosen, a wrong one rejected) through `finetune train`.

On a tiny random model the trainer learns a label prior, not the text (FACTS.md): these tests check the mechanics
and the direction of the metrics, never quality."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import FINLORA, needs_shared
from finetune import config
from finetune.train import preference as rl

LABELS = ("negative", "neutral", "positive")
PAIR_TYPE = {"field_prompt": "context", "field_chosen": "target", "field_rejected": "wrong"}


def sentiment_pairs(rows: list[dict], seed: int) -> list[dict]:
    """Each FinLoRA row becomes a pair: its label chosen, one of the two other labels rejected."""
    import random

    rng = random.Random(seed)
    return [{**r, "wrong": rng.choice([x for x in LABELS if x != r["target"]])} for r in rows]


def write_pairs(root: Path, train_rows: int, test_rows: int) -> tuple[Path, Path]:
    rows = [
        json.loads(line) for line in (FINLORA / "fpb_test.jsonl").read_text().splitlines() if line.strip()
    ]
    train = root / "train_pairs.jsonl"
    test = root / "test_pairs.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in sentiment_pairs(rows[:train_rows], 0)))
    test.write_text("".join(json.dumps(r) + "\n" for r in sentiment_pairs(rows[-test_rows:], 1)))
    return train, test


class ScoresAtEnd:
    """Scores of fixed sequences by the live model at the end of training (to compare with the reloaded one)."""

    def __init__(self, sequences: list[list[int]], pad: int):
        from transformers import TrainerCallback

        outer = self

        class _Callback(TrainerCallback):
            def on_train_end(self, args, state, control, model=None, **kwargs):
                outer.scores = rl.score(model, pad, sequences)

        self.callback, self.scores = _Callback(), None


@pytest.fixture(scope="module")
def reward_run(tiny_model_dir, tmp_path_factory):
    """A finished QLoRA reward-model run: 256 training pairs, 64 held-out pairs, 30 steps (~15 s on a CPU)."""
    import torch

    from finetune import data, train
    from finetune.data.tokenizer import load_tokenizer

    root = tmp_path_factory.mktemp("reward")
    train_file, test_file = write_pairs(root, 256, 64)
    cfg = config.validate({
        "base_model": str(tiny_model_dir), "adapter": "qlora", "load_in_4bit": True, "lora_r": 8, "lora_alpha": 16,
        "lora_target_linear": True, "reward_model": True, "num_labels": 1,
        "datasets": [{"path": str(train_file), "type": PAIR_TYPE}],
        "test_datasets": [{"path": str(test_file), "type": PAIR_TYPE}],
        "sequence_len": 256, "max_prompt_len": 96, "dataset_prepared_path": str(root / "prepared"),
        "output_dir": str(root / "out"), "micro_batch_size": 8, "max_steps": 30, "learning_rate": 1e-3,
        "lr_scheduler": "constant", "logging_steps": 5, "eval_steps": 15, "seed": 3,
    })  # fmt: skip
    tokenizer = load_tokenizer(cfg)
    held_out = data.prepare(cfg, tokenizer).eval
    sequences = [p + c for p, c in zip(held_out["prompt_ids"][:8], held_out["chosen_ids"][:8], strict=True)]
    live = ScoresAtEnd(sequences, tokenizer.pad_token_id)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = train.run(cfg, callbacks=[live.callback])
    finally:
        torch.set_num_threads(threads)
    return cfg, out, sequences, live.scores


@needs_shared
def test_reward_model_beats_chance_on_held_out_pairs(reward_run):
    cfg, out, _, _ = reward_run
    results = json.loads((out / "eval_results.json").read_text())
    assert results["eval_accuracy"] > 0.6  # chance is 0.5 (the label prior alone reaches ~0.76, FACTS.md)
    assert results["eval_margin"] > 0
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    train = [e for e in history if "loss" in e and "accuracy" in e]
    assert train[-1]["loss"] < train[0]["loss"] < 0.7  # Bradley-Terry loss starts near log 2 and falls
    assert len([e for e in history if "eval_accuracy" in e]) == 2
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["task_type"] == "SEQ_CLS" and "score" in adapter["modules_to_save"]


@needs_shared
def test_saved_reward_adapter_reloads_and_scores_the_same(reward_run):
    from peft import PeftModel

    from finetune import model as model_module
    from finetune.data.tokenizer import load_tokenizer

    cfg, out, sequences, live = reward_run
    prec = model_module.precision(cfg)
    base = model_module.load_base(cfg, prec, [])  # 4-bit NF4 in fp32 compute, as trained
    base.config.pad_token_id = load_tokenizer(cfg).pad_token_id
    reloaded = PeftModel.from_pretrained(base, out)
    # training ran the 4-bit layers with bitsandbytes' CPU repack off (model.disable_cpu_bf16_repack): the
    # repacked bf16 kernel scores ~1e-3 apart, so compare like with like
    model_module.disable_cpu_bf16_repack(reloaded)
    assert rl.score(reloaded, base.config.pad_token_id, sequences) == live  # bit-identical at equal precision


@needs_shared
def test_reward_card_parses_and_carries_accuracy(reward_run):
    from huggingface_hub import ModelCard

    _, out, _, _ = reward_run
    card = ModelCard.load(out / "README.md")
    assert card.data.pipeline_tag == "text-classification"
    assert {"reward-model", "trl", "qlora"} <= set(card.data.tags)
    metrics = {r.metric_type: r.metric_value for r in card.data.eval_results}
    results = json.loads((out / "eval_results.json").read_text())
    assert metrics["accuracy"] == results["eval_accuracy"] and "loss" in metrics
    table = card.text.split("### Training results")[1]
    assert "| Accuracy |" in table.splitlines()[2]
    assert "is a reward model" in card.text and "AutoModelForSequenceClassification" in card.text
    assert "perplexity" not in card.text  # a pair loss has none
    snippet = card.text.split("## Usage")[1].split("```python\n")[1].split("```")[0]
    namespace: dict = {}
    exec(snippet.replace("torch.bfloat16", "torch.float32"), namespace)  # the card's code runs and scores
    assert namespace["scores"].shape == (2,)


@needs_shared
def test_reward_model_merges_into_a_sequence_classifier(reward_run, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from finetune.outputs import card, merge

    cfg, out, sequences, live = reward_run
    diff = merge.merge_command(out, tmp_path / "merged", dtype="fp32", dequantize=True)
    assert diff < 1e-4  # the saved merged model scores as base + adapter did
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged")
    assert merged.config.num_labels == 1 and merged.config.pad_token_id is not None
    assert "is a reward model" in (tmp_path / "merged" / "README.md").read_text()
    card.write_card(out, dest=tmp_path)  # `finetune card` on the run folder works too
    assert "reward-model" in (tmp_path / "README.md").read_text()
