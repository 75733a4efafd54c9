# ruff: noqa: E402
"""Fast batching that keeps the steps (batch_flattening; batching.py's `flattened` and `group_by_length`): the
same optimizer steps as unpacked, no padded tokens, every row once per epoch with its labels unchanged, and
flattened rows give the padded batch's loss — with flash-attention varlen on a GPU, with sdpa run per sequence
elsewhere (CPU). Where neither serves (eager attention), the same key groups rows by length, and says so."""

from __future__ import annotations

import importlib.util
import json
import math
from itertools import pairwise

import pytest

torch = pytest.importorskip("torch")

from conftest import INST_FORMAT as PROMPT
from finetune import config, train
from finetune.model import Precision
from finetune.model.sequence_attention import SEQUENCE_SDPA, use_sequence_attention
from finetune.train import arguments as trainer_args
from finetune.train import batching

pytestmark = pytest.mark.usefixtures("one_thread")

FP32 = Precision(bf16=False, fp16=False, tf32=None, dtype="float32")
FLASH = torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None
ROWS = 160


def data_file(tmp_path):
    """Rows of very different lengths (as real data has), each distinct so a batch row names its source row."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "mixed.jsonl"
    words = "revenue rose while margins fell and the board kept its guidance for the year".split()
    lines = []
    for i in range(ROWS):
        context = f"row {i}: " + " ".join(words[k % len(words)] for k in range(3 + (i * 37) % 90))
        lines.append(json.dumps({"context": context, "target": f"answer {i}"}))
    path.write_text("\n".join(lines) + "\n")
    return path


def cfg_of(tmp_path, base="org/model", **over) -> config.Config:
    raw = {
        "base_model": str(base), "adapter": "lora", "lora_r": 4, "lora_alpha": 8, "lora_target_linear": True,
        "datasets": [{"path": str(data_file(tmp_path)), "type": PROMPT}], "val_set_size": 0,
        "sequence_len": 256, "dataset_prepared_path": str(tmp_path / "prep"), "dataset_processes": 1,
        "output_dir": str(tmp_path / "out"), "micro_batch_size": 4, "num_epochs": 1, "learning_rate": 0.01,
        "logging_steps": 1, "save_strategy": "no", "seed": 3, **over,
    }  # fmt: skip
    return config.validate(raw)


# ---------------------------------------------------------------- the choice


def test_batch_flattening_flattens_with_flash_or_sdpa_and_groups_by_length_elsewhere(tmp_path):
    for cfg in (cfg_of(tmp_path, batch_flattening=True), cfg_of(tmp_path)):  # asked for, or the default
        strategy, why = batching.choose(cfg, "flash_attention_2", on_gpu=True)
        assert strategy == "flattened"
        assert why == "4 rows a batch flattened into one padding-free row, flash-attention varlen"
        for on_gpu in (
            False,
            True,
        ):  # sdpa switched to per-sequence attention (attention_for): CPU or GPU alike
            strategy, why = batching.choose(cfg, SEQUENCE_SDPA, on_gpu=on_gpu)
            assert strategy == "flattened" and why.endswith("sdpa run per sequence (no varlen kernel here)")
    cfg = cfg_of(tmp_path, batch_flattening=True)
    for attn in ("eager", "sdpa"):  # eager, or an sdpa model that could not switch: rows grouped by length
        strategy, why = batching.choose(cfg, attn, on_gpu=False)
        assert strategy == "group_by_length"
        want = f"batch_flattening needs flash-attention varlen or sdpa, and this model runs {attn} attention"
        assert why.endswith(want)
    # the default yields to what else shapes the batches, and padded batches stay one key away
    assert batching.choose(cfg_of(tmp_path), "eager", on_gpu=False)[0] == "random"
    assert (
        batching.choose(cfg_of(tmp_path, group_by_length=True), SEQUENCE_SDPA, False)[0] == "group_by_length"
    )
    assert batching.choose(cfg_of(tmp_path, batch_flattening=False), SEQUENCE_SDPA, False)[0] == "random"
    assert not batching.flattening(cfg_of(tmp_path, pad_to_sequence_len=True))  # full-length rows asked for
    assert not batching.flattening(cfg_of(tmp_path, sample_packing=True))
    assert not batching.flattening(cfg_of(tmp_path).model_copy(update={"rl": "dpo"}))  # TRL pads its pairs
    # sample_packing keeps axolotl's meaning (token-budget steps) and decides when both are set
    both = cfg_of(tmp_path, batch_flattening=True, sample_packing=True)
    assert batching.choose(both, "flash_attention_2", on_gpu=True)[0] == "packed"
    assert batching.choose(both, "sdpa", on_gpu=False)[0] == "length_budget"
    assert (
        batching.choose(cfg_of(tmp_path, batch_flattening=False), "flash_attention_2", on_gpu=True)[0]
        == "random"
    )


def test_flash_plan_flattens_micro_batch_size_rows_into_one_row(tmp_path, tiny_model_dir):
    """On a GPU with flash attention: the Trainer's own sampler (micro_batch_size rows, so the unpacked step
    count) and transformers' flattening collator with the varlen kernel's arguments."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    cfg = cfg_of(tmp_path, batch_flattening=True)
    gpu = batching.plan(cfg, tok, None, None, "flash_attention_2", on_gpu=True, world_size=1)
    assert gpu.strategy == "flattened" and gpu.train_sampler is None and gpu.batches_per_epoch is None
    features = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8, 9], "labels": [-100, 9]}]
    batch = gpu.train_collator(features)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9]] and "attention_mask" not in batch
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert batch["labels"].tolist() == [[-100, 6, 7, -100, 9]]  # no label crosses from one row into the next
    assert batch["cu_seq_lens_q"].tolist() == [0, 3, 5] and batch["use_cache"] is False
    args, _ = trainer_args.training_arguments(cfg, FP32, ROWS, False, str(tmp_path), [], on_gpu=True)
    assert args.train_sampling_strategy == "random"


@pytest.mark.parametrize(
    "attn",
    [
        "sdpa",
        pytest.param(
            "flash_attention_2",
            marks=pytest.mark.skipif(not FLASH, reason="needs a CUDA GPU and flash_attn (the GPU path)"),
        ),
    ],
)
def test_flattened_batch_gives_the_padded_loss(tmp_path, tiny_model_dir, attn):
    """The flattening collator on micro_batch_size real rows: the loss of the padded batch. sdpa run per
    sequence on CPU, flash-attention varlen on a GPU."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    flash = attn.startswith("flash")
    device, dtype = ("cuda", torch.bfloat16) if flash else ("cpu", torch.float32)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=attn, dtype=dtype)
    model = model.to(device).train()
    cfg = cfg_of(tmp_path, batch_flattening=True)
    flattened = batching.plan(cfg, tok, None, None, "flash_attention_2", on_gpu=True, world_size=1)
    features = []
    for n in (9, 31, 17, 4):  # micro_batch_size rows of different lengths, the answer half trained
        ids = list(range(10, 10 + n))
        features.append(
            {"input_ids": ids, "attention_mask": [1] * n, "labels": [-100] * (n // 2) + ids[n // 2 :]}
        )
    batches = [
        batching.padded_collator(cfg, tok)([dict(f) for f in features]),
        flattened.train_collator([dict(f) for f in features]),
    ]
    if not flash:  # what attention_for does to an sdpa model when batch_flattening is on
        assert use_sequence_attention(model)
    losses = []
    with torch.no_grad():
        for batch in batches:
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            losses.append(model(**batch).loss.float())
    torch.testing.assert_close(losses[1], losses[0], rtol=0, atol=2e-2 if flash else 1e-5)


# ---------------------------------------------------------------- the run: steps, padding, rows, masking


def planned_trainer(cfg, tiny_model_dir):
    """The Trainer as `train.run` assembles it (attention -> plan -> arguments -> trainer), without training."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune import data
    from finetune.train.trainer import FinetuneTrainer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    train_set = data.prepare(cfg, tok).train
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, task_type="CAUSAL_LM"))
    attention = batching.attention_for(cfg, model, "sdpa")
    plan = batching.plan(cfg, tok, train_set, None, attention, on_gpu=False, world_size=1)
    args, sched = trainer_args.training_arguments(
        cfg, FP32, len(train_set), False, cfg.output_dir, [], plan.batches_per_epoch, on_gpu=False,
        length_grouped=plan.strategy == "group_by_length",
    )  # fmt: skip
    trainer = FinetuneTrainer(
        model=model, args=args, train_dataset=train_set, data_collator=plan.train_collator,
        processing_class=tok, batch_plan=plan,
    )  # fmt: skip
    return trainer, train_set, sched


def batch_rows(batch) -> tuple[list[tuple[list[int], list[int]]], int]:
    """(input_ids, labels) of each row in a batch, and the batch's padded tokens."""
    if "attention_mask" not in batch:  # flattened: one row, the sequences cut at cu_seq_lens_q
        assert batch["input_ids"].shape[0] == 1 and batch["position_ids"].shape == batch["input_ids"].shape
        bounds = batch["cu_seq_lens_q"].tolist()
        ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
        return [(ids[a:b], labels[a:b]) for a, b in pairwise(bounds)], 0
    out = []
    for ids, mask, labels in zip(batch["input_ids"], batch["attention_mask"], batch["labels"], strict=True):
        real = mask.bool()
        assert (labels[~real] == -100).all()
        out.append((ids[real].tolist(), labels[real].tolist()))
    return out, int((batch["attention_mask"] == 0).sum())


def test_cpu_batches_keep_rows_steps_and_masking_with_less_padding(tmp_path, tiny_model_dir):
    runs = {}
    variants = [
        ("unpacked", {"batch_flattening": False}),
        ("grouped", {"group_by_length": True}),
        ("flattening", {}),  # the default
    ]
    for name, over in variants:
        cfg = cfg_of(tmp_path / name, base=tiny_model_dir, **over)
        trainer, train_set, sched = planned_trainer(cfg, tiny_model_dir)
        assert sched.steps_per_epoch == math.ceil(ROWS / 4)
        source = {tuple(r["input_ids"]): r["labels"] for r in train_set}
        seen, padded = [], []
        for batch in trainer.get_train_dataloader():
            batch_of, pad = batch_rows(batch)
            assert len(batch_of) <= 4  # micro_batch_size rows a batch, as unpacked
            padded.append(pad)
            for ids, labels in batch_of:
                assert (
                    labels == source[tuple(ids)]
                )  # masking unchanged (a row's first label is never trained)
                seen.append(tuple(ids))
        assert sorted(seen) == sorted(source)  # every row exactly once in the epoch
        runs[name] = (len(padded), sum(padded))
    assert runs["flattening"][0] == runs["grouped"][0] == runs["unpacked"][0] == math.ceil(ROWS / 4)
    assert runs["grouped"][1] < runs["unpacked"][1] / 3, runs  # rows of similar length share a batch
    assert runs["flattening"][1] == 0 < runs["grouped"][1], runs


@pytest.mark.slow
def test_batch_flattening_run_on_cpu_flattens_and_trains_as_unpacked(tmp_path, tiny_model_dir, capsys):
    """The same rows in the same order, flattened: the unpacked run's steps and losses, with no padding."""
    results, logs = {}, {}
    for name, over in [
        ("unpacked", {"batch_flattening": False}),
        ("flattening", {}),
    ]:  # flattening: the default
        cfg = cfg_of(tmp_path / name, base=tiny_model_dir, **over)
        train.run(cfg)
        results[name] = json.loads((tmp_path / name / "out" / "all_results.json").read_text())
        state = json.loads((tmp_path / name / "out" / "trainer_state.json").read_text())
        results[name]["steps"] = state["global_step"]
        logs[name] = [e["loss"] for e in state["log_history"] if "loss" in e]
    err = " ".join(capsys.readouterr().err.split())
    assert (
        "batching: flattened (4 rows a batch flattened into one padding-free row, sdpa run per sequence"
        in err
    )
    flat, plain = results["flattening"], results["unpacked"]
    assert flat["batching"] == "flattened" and plain["batching"] == "random"
    assert flat["steps"] == plain["steps"] == math.ceil(ROWS / 4)
    assert flat["padded_tokens"] == 0 < plain["padded_tokens"]
    assert len(logs["flattening"]) == len(logs["unpacked"]) == flat["steps"]
    assert logs["flattening"] == pytest.approx(logs["unpacked"], rel=1e-4)  # the same training, step by step
