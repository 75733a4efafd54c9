# ruff: noqa: E402
"""FinetuneTrainer's own parts that need no training run: the LoRA+ optimizer."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from finetune import (
    config,
    model,  # noqa: E402
)
from finetune.data.tokenizer import count_new_tokens, load_tokenizer  # noqa: E402
from finetune.train.trainer import FinetuneTrainer  # noqa: E402

QA = Path(__file__).resolve().parent.parent / "examples" / "finance_qa.jsonl"


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("optim", ["adamw_torch", "adamw_bnb_8bit"])
def test_loraplus_puts_b_matrices_at_ratio_times_the_learning_rate(tiny_model_dir, tmp_path, optim):
    from transformers import TrainingArguments

    cfg = config.validate(
        {"base_model": str(tiny_model_dir), "adapter": "lora", "datasets": [{"path": str(QA)}], "seed": 1}
    )
    tok = load_tokenizer(cfg)
    peft_model = model.load(cfg, tok, count_new_tokens(cfg, tok)).model
    args = TrainingArguments(
        output_dir=str(tmp_path), learning_rate=1e-3, weight_decay=0.01, optim=optim, report_to="none",
        adam_beta2=0.95, use_cpu=True,
    )  # fmt: skip
    trainer = FinetuneTrainer(model=peft_model, args=args)
    trainer.loraplus = (16.0, None)
    optimizer = trainer.create_optimizer()
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    trained = {n: p for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trained and all(id(p) in lr_of for p in trained.values())  # every trained weight, once
    for name, p in trained.items():
        assert lr_of[id(p)] == pytest.approx(16e-3 if "lora_B" in name else 1e-3), name
    assert all(g["betas"] == (0.9, 0.95) for g in optimizer.param_groups)  # the Trainer's own arguments
    plain = FinetuneTrainer(model=peft_model, args=args).create_optimizer()
    assert {g["lr"] for g in plain.param_groups} == {1e-3}
