# ruff: noqa: E402
"""FinetuneTrainer's own parts that need no training run: the LoRA+ optimizer, activation offloading."""

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

QA = Path(__file__).resolve().parents[2] / "examples" / "finance_qa.jsonl"


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


@pytest.mark.usefixtures("one_thread")
def test_offload_sends_each_checkpointed_layer_input_to_host_memory_with_exact_gradients(
    tiny_model_dir, tmp_path, monkeypatch
):
    """`gradient_checkpointing: offload`: FinetuneTrainer.compute_loss runs the forward under
    speedups.offload_activations (the hidden states each checkpoint keeps go to host memory and come back for
    the backward). On CPU-as-device with unpinned memory the same hooks run; the gradients must not change."""
    from transformers import TrainingArguments

    from finetune.model import speedups

    cfg = config.validate({
        "base_model": str(tiny_model_dir), "adapter": "lora", "lora_target_linear": True,
        "gradient_checkpointing": "offload", "datasets": [{"path": str(QA)}], "seed": 1,
    })  # fmt: skip
    tok = load_tokenizer(cfg)
    peft_model = model.load(cfg, tok, count_new_tokens(cfg, tok)).model.train()
    # offload rides on checkpointing (which runs plain on CPU)
    assert any(getattr(m, "gradient_checkpointing", False) for m in peft_model.modules())
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    ids = tok(["Revenue rose 12% to $4.1 billion.", "Net income fell."], padding=True, return_tensors="pt")
    batch = {**ids, "labels": ids["input_ids"].masked_fill(ids["attention_mask"] == 0, -100)}

    offloaded: list[int] = []
    original = speedups.offload_activations

    def recorded(
        hidden_size, device_type="cuda", **kwargs
    ):  # the trainer's call, counted and unpinned (no CUDA)
        assert device_type == "cpu"
        return original(hidden_size, device_type, pin_memory=False, counter=offloaded)

    monkeypatch.setattr(speedups, "offload_activations", recorded)
    grads = []
    for offload in (False, True):
        peft_model.zero_grad()
        trainer = FinetuneTrainer(model=peft_model, args=args, offload=offload)
        trainer.compute_loss(peft_model, dict(batch)).backward()
        grads.append({n: p.grad.clone() for n, p in peft_model.named_parameters() if p.requires_grad})
        if not offload:
            assert offloaded == []  # the plain trainer never offloads
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=0, atol=0, msg=name)
    hidden = peft_model.config.hidden_size
    layers = peft_model.config.num_hidden_layers
    # every checkpointed layer's input went to host memory, and only hidden-state-wide tensors did
    assert len(offloaded) >= layers and set(offloaded) == {ids["input_ids"].numel() * hidden}
