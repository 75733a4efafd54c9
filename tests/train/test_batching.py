# ruff: noqa: E402
"""Batching (batching.py, trainer.py): token-budget and packed batches cover every row once per epoch, seeded
and resumable; packed rows give exactly the unpacked loss (sdpa detects them from position_ids); tokens and
padding are counted; the strategy follows the device; the GPU-only options say so on CPU."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")


from conftest import INST_FORMAT as PROMPT  # noqa: E402
from conftest import send_signal  # noqa: E402
from finetune import config, train
from finetune.errors import UserError  # noqa: E402
from finetune.model import speedups
from finetune.train import arguments as trainer_args  # noqa: E402
from finetune.train import batching

ROOT = Path(__file__).resolve().parents[2]
QA = ROOT / "examples" / "finance_qa.jsonl"
LENGTHS = np.random.default_rng(0).integers(5, 300, size=257)


pytestmark = pytest.mark.usefixtures("one_thread")


def cfg_of(tmp_path, **over) -> config.Config:
    raw = {
        "base_model": "org/model",
        "adapter": "lora",
        "datasets": [{"path": str(QA), "type": PROMPT}],
        "output_dir": str(tmp_path / "out"),
        **over,
    }
    return config.validate(raw)


# ---------------------------------------------------------------- batches from lengths


@pytest.mark.parametrize("packed", [False, True])
def test_every_row_once_within_budget_and_seeded(packed):
    sampler = batching.TokenBatchSampler(LENGTHS, budget=1024, packed=packed, seed=3)
    epoch0 = [list(b) for b in sampler.batches(0)]
    rows = sorted(i for b in epoch0 for i in b)
    assert rows == list(range(len(LENGTHS)))  # every row exactly once
    for b in epoch0:
        lens = LENGTHS[b]
        assert (lens.sum() if packed else len(b) * lens.max()) <= 1024
    again = batching.TokenBatchSampler(LENGTHS, budget=1024, packed=packed, seed=3)
    again.set_epoch(0)
    assert [list(b) for b in again] == epoch0  # a fresh process (a resume) sees the same batches
    assert len(sampler.batches(1)) == len(epoch0) == len(sampler)  # same count every epoch: a fixed schedule
    assert [list(b) for b in sampler.batches(1)] != epoch0  # but a new order
    other_seed = batching.TokenBatchSampler(LENGTHS, budget=1024, packed=packed, seed=4)
    assert [list(b) for b in other_seed.batches(0)] != epoch0


def test_budget_batches_waste_little_and_packing_less():
    padded = batching.budget_batches(LENGTHS, 1024, np.random.default_rng(0))
    packed = batching.ffd_batches(LENGTHS, 1024, np.random.default_rng(0))
    real = LENGTHS.sum()
    pad_share = 1 - real / sum(len(b) * LENGTHS[b].max() for b in padded)
    assert pad_share < 0.05  # vs ~45% for random batches of these lengths
    assert len(packed) <= np.ceil(real / 1024) + 1  # first-fit-decreasing is within a bin of the bound here


def test_cuts_keep_short_rows_out_of_long_batches():
    """A greedy fill would pad the last short rows to the first long one's length (12% padding measured)."""
    lengths = np.array([200 + i % 80 for i in range(150)] + [881, 1004, 1104, 1140, 1500, 1986, 1990])
    batches = batching.budget_batches(lengths, 8192, None)
    for b in batches:
        assert lengths[b].max() < 300 or lengths[b].min() > 800  # never a short row padded to a long one
    slots = sum(len(b) * lengths[b].max() for b in batches)
    assert 1 - lengths.sum() / slots < 0.05
    assert batching.cut_points(np.sort(lengths), 8192, batch_cost=0)[-1] == len(lengths)


def test_ranks_get_equal_shares_of_all_rows():
    from accelerate.data_loader import BatchSamplerShard

    sampler = batching.TokenBatchSampler(LENGTHS, budget=1024, packed=False, seed=1, world_size=2)
    shares = [list(BatchSamplerShard(sampler, num_processes=2, process_index=r)) for r in (0, 1)]
    assert len(shares[0]) == len(shares[1]) == sampler.batches_per_rank == len(sampler) // 2
    rows = sorted(i for share in shares for b in share for i in b)
    assert rows == list(range(len(LENGTHS)))  # nothing dropped, nothing repeated
    assert shares[0] == [list(b) for b in sampler.rank_batches(0, 0)]


def test_split_for_ranks_repeats_only_when_it_cannot_split():
    one_row_batches = [np.array([i]) for i in range(5)]
    out = batching.split_for_ranks(one_row_batches, 2)
    assert len(out) == 6 and [list(b) for b in out[-1:]] == [[0]]
    out = batching.split_for_ranks([np.array([0, 1, 2]), np.array([3])], 4)
    assert len(out) == 4 and sorted(i for b in out for i in b) == [0, 1, 2, 3]


# ---------------------------------------------------------------- the choice


def test_strategy_follows_the_device(tmp_path):
    packing = cfg_of(tmp_path, sample_packing=True, micro_batch_size=2, sequence_len=512)
    assert batching.choose(packing, "flash_attention_2", on_gpu=True)[0] == "packed"
    assert batching.choose(packing, "sdpa", on_gpu=True)[0] == "length_budget"
    strategy, why = batching.choose(packing, "sdpa", on_gpu=False)
    assert strategy == "length_budget" and "1,024 padded tokens" in why and "CPU" in why
    assert batching.choose(cfg_of(tmp_path, group_by_length=True), "sdpa", False)[0] == "group_by_length"
    assert batching.choose(cfg_of(tmp_path), "sdpa", False)[0] == "random"


def test_pad_to_sequence_len_pads_on_a_gpu_only(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    cfg = cfg_of(tmp_path, pad_to_sequence_len=True, sequence_len=64)
    features = [{"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [-100, 6, 7]}]
    gpu = batching.plan(cfg, tok, None, None, "sdpa", on_gpu=True, world_size=1)
    assert gpu.train_collator(features)["input_ids"].shape == (1, 64) and not gpu.notes
    cpu = batching.plan(cfg, tok, None, None, "sdpa", on_gpu=False, world_size=1)
    assert cpu.train_collator(features)["input_ids"].shape == (1, 3)
    assert cpu.eval_collator(features)["input_ids"].shape == (1, 3)
    assert any("pad_to_sequence_len: ignored on CPU" in note for note in cpu.notes)


def test_schedule_counts_token_budget_batches(tmp_path):
    cfg = cfg_of(tmp_path, sample_packing=True, gradient_accumulation_steps=4, num_epochs=2)
    sched = trainer_args.schedule(cfg, train_rows=1000, batches_per_epoch=10)
    assert (sched.steps_per_epoch, sched.total_steps) == (3, 6)  # ceil(10 / 4) a epoch, as the Trainer counts


# ---------------------------------------------------------------- packed rows give the unpacked loss


def rows(tokenizer, n=6):
    texts = [line for line in QA.read_text().splitlines()[:n]]
    out = []
    for i, text in enumerate(texts):
        ids = tokenizer(text[: 40 + 37 * i])["input_ids"]
        labels = [-100] * (len(ids) // 2) + ids[len(ids) // 2 :]
        out.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
    return out


FLASH = torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None


@pytest.mark.parametrize(
    "attn",
    [
        "sdpa",
        "eager",
        pytest.param(
            "flash_attention_2",
            marks=pytest.mark.skipif(not FLASH, reason="needs a CUDA GPU and flash_attn (the GPU path)"),
        ),
    ],
)
def test_packed_rows_give_the_padded_loss_and_gradients(tiny_model_dir, tmp_path, attn):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    flash = attn.startswith("flash")
    device, dtype = ("cuda", torch.bfloat16) if flash else ("cpu", torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=attn, dtype=dtype)
    model = model.to(device).train()
    features = rows(tokenizer)
    padded = batching.padded_collator(cfg_of(tmp_path), tokenizer)([dict(f) for f in features])
    packed = batching.PackedCollator(flash_kwargs=flash)([dict(f) for f in features])
    padded, packed = (
        {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in b.items()}
        for b in (padded, packed)
    )
    # bf16 on the GPU: the padded batch (flash unpads it by its mask) and the packed one round differently
    tol = dict(rtol=0, atol=2e-2) if flash else dict(rtol=0, atol=1e-5)
    gtol = dict(rtol=5e-2, atol=1e-3) if flash else dict(rtol=1e-4, atol=1e-6)
    assert packed["input_ids"].shape == (1, sum(len(f["input_ids"]) for f in features))
    assert "attention_mask" not in packed and packed["use_cache"] is False

    def loss_and_grads(batch):
        model.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    loss_p, grads_p = loss_and_grads(padded)
    loss_k, grads_k = loss_and_grads(packed)
    torch.testing.assert_close(loss_k, loss_p, **tol)
    for a, b in zip(grads_k, grads_p, strict=True):
        torch.testing.assert_close(a, b, **gtol)
    if (
        not flash
    ):  # The trap the collator guards against: with a cache, packed sequences attend to each other.
        leaky = model(**{**packed, "use_cache": True}).loss.detach()
        assert abs(leaky - loss_p) > 1e-3


def lora_model(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, set_seed

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    set_seed(0)
    return get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
    )


def run_trainer(tiny_model_dir, out, train_set, tokenizer, sampler, collator):
    from transformers import TrainingArguments

    from finetune.train.trainer import FinetuneTrainer

    plan = batching.BatchPlan("test", "", 512, sampler, None, collator, collator, [])
    args = TrainingArguments(
        output_dir=str(out), max_steps=4, gradient_accumulation_steps=2, learning_rate=0.01,
        lr_scheduler_type="constant", logging_steps=1, save_strategy="no", report_to="none", seed=0,
        include_num_input_tokens_seen="non_padding", disable_tqdm=True, use_cpu=True,
    )  # fmt: skip
    trainer = FinetuneTrainer(
        model=lora_model(tiny_model_dir), args=args, train_dataset=train_set, data_collator=collator,
        processing_class=tokenizer, batch_plan=plan,
    )  # fmt: skip
    trainer.train()
    return trainer


def test_trainer_steps_on_packed_rows_equal_padded_ones(tiny_model_dir, tmp_path):
    """The same batches through the Trainer (accumulation, token-weighted loss): packed == padded, step by step."""
    import datasets
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    train_set = datasets.Dataset.from_list(rows(tokenizer, 24) * 2)
    lengths = batching.dataset_lengths(train_set)
    runs = {}
    for name, collator in [
        ("padded", batching.padded_collator(cfg_of(tmp_path), tokenizer)),
        ("packed", batching.PackedCollator()),
    ]:
        sampler = batching.TokenBatchSampler(lengths, 512, packed=True, seed=5)
        runs[name] = run_trainer(tiny_model_dir, tmp_path / name, train_set, tokenizer, sampler, collator)
    losses = {k: [e["loss"] for e in t.state.log_history if "loss" in e] for k, t in runs.items()}
    assert len(losses["packed"]) == 4
    np.testing.assert_allclose(losses["packed"], losses["padded"], rtol=0, atol=1e-5)
    for a, b in zip(runs["packed"].model.parameters(), runs["padded"].model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    # tokens: both count only real tokens (the same rows); only the padded run has padding
    sampler = batching.TokenBatchSampler(lengths, 512, packed=True, seed=5)
    trained = sum(int(lengths[b].sum()) for b in sampler.batches(0)[:8])  # 4 steps x 2 accumulated batches
    assert runs["packed"].state.num_input_tokens_seen == runs["padded"].state.num_input_tokens_seen == trained
    assert runs["packed"].padding_fraction() == 0
    assert 0 < runs["padded"].padding_fraction() < 0.9
    assert any("padding_fraction" in e for e in runs["padded"].state.log_history)


# ---------------------------------------------------------------- end to end: schedule, results, resume


def make_cfg(base, out, prepared, **over) -> config.Config:
    raw = {
        "base_model": str(base), "load_in_4bit": True, "adapter": "qlora", "lora_r": 8, "lora_alpha": 16,
        "lora_target_linear": True, "datasets": [{"path": str(QA), "type": PROMPT}], "val_set_size": 0,
        "sequence_len": 256, "dataset_prepared_path": str(prepared), "dataset_processes": 1,
        "output_dir": str(out), "micro_batch_size": 1, "learning_rate": 0.01, "lr_scheduler": "cosine",
        "logging_steps": 1, "seed": 7, "sample_packing": True, **over,
    }  # fmt: skip
    return config.validate(raw)


@pytest.mark.slow
def test_packing_run_schedule_results_and_resume_in_second_epoch(tiny_model_dir, tmp_path, capsys):
    from safetensors.torch import load_file

    settings = {"num_epochs": 2, "save_steps": 3, "lora_dropout": 0.1, "gradient_accumulation_steps": 2}
    straight = tmp_path / "straight"
    train.run(make_cfg(tiny_model_dir, straight, tmp_path / "prep", **settings))
    err = capsys.readouterr().err
    assert "batching: length_budget" in err
    state = json.loads((straight / "trainer_state.json").read_text())
    results = json.loads((straight / "all_results.json").read_text())
    lengths = np.array([len(r["input_ids"]) for r in _prepared_rows(tmp_path / "prep")])
    batches = len(batching.budget_batches(lengths, 256, None))
    per_epoch = -(-batches // 2)
    assert state["max_steps"] == state["global_step"] == 2 * per_epoch  # the schedule matches the batches
    assert results["batching"] == "length_budget" and 0 <= results["padding_fraction"] < 0.2
    assert state["num_input_tokens_seen"] == 2 * lengths.sum()  # every row, every epoch, real tokens only
    # a step of token-budget batches is reported in tokens (its row count varies), not micro_batch x accumulation
    assert results["total_train_batch_tokens"] == 256 * 2 and "total_train_batch_size" not in results
    assert results["mean_rows_per_step"] == round(len(lengths) / per_epoch, 1)
    card = (straight / "README.md").read_text()
    assert f"total_train_batch_size: 512 tokens (~{results['mean_rows_per_step']} rows)" in card
    assert "train_batch_size: 256 tokens (token-budget batches)" in card
    logs = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert all("padding_fraction" in e and "train_tokens_per_second" in e for e in logs if "loss" in e)

    out = tmp_path / "interrupted"
    cfg = make_cfg(tiny_model_dir, out, tmp_path / "prep", **settings)
    stop_at = per_epoch + 2  # mid second epoch: the sampler must rebuild epoch 1's order and skip its start
    with pytest.raises(SystemExit):
        train.run(cfg, callbacks=[send_signal(stop_at)])
    train.run(cfg, resume=True)
    a, b = (
        load_file(str(straight / "adapter_model.safetensors")),
        load_file(str(out / "adapter_model.safetensors")),
    )
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6)


def _prepared_rows(prep: Path):
    from finetune.data import load_prepared

    (folder,) = [p for p in prep.iterdir() if p.is_dir()]
    return load_prepared(folder).train


# ---------------------------------------------------------------- GPU options on CPU, config keys


def test_gpu_options_are_skipped_on_cpu_and_liger_needs_its_package(tmp_path):
    cfg = cfg_of(tmp_path, liger_rms_norm=True, liger_glu_activation=True, torch_compile=True)
    notes: list[str] = []
    assert speedups.liger_arguments(cfg, on_gpu=False, notes=notes) == {}
    assert speedups.compile_arguments(cfg, on_gpu=False, notes=notes) == {}
    assert "skipped on CPU" in notes[0] and "torch_compile" in notes[1]
    import importlib.util

    if importlib.util.find_spec("liger_kernel") is None:
        with pytest.raises(UserError, match="liger_rms_norm: needs the liger-kernel package"):
            speedups.liger_arguments(cfg, on_gpu=True, notes=[])
    args = speedups.compile_arguments(cfg.model_copy(update={"torch_compile_mode": "max-autotune"}), True, [])
    assert args == {"torch_compile": True, "torch_compile_mode": "max-autotune"}


def test_liger_keys_map_to_kernel_config(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: object() if name == "liger_kernel" else real(name, *a)
    )
    cfg = cfg_of(tmp_path, liger_rope=True, liger_fused_linear_cross_entropy=True)
    out = speedups.liger_arguments(cfg, on_gpu=True, notes=[])
    assert out["use_liger_kernel"] is True
    assert out["liger_kernel_config"] == {
        "rope": True, "rms_norm": False, "swiglu": False, "geglu": False, "layer_norm": False,
        "cross_entropy": False, "fused_linear_cross_entropy": True,
    }  # fmt: skip


def test_plugins_and_liger_conflicts_are_checked(tmp_path):
    cfg_of(tmp_path, plugins=["axolotl.integrations.liger.LigerPlugin"], liger_rope=True)
    with pytest.raises(UserError, match=r"plugins\[0\].*KernelsPlugin is not supported"):
        cfg_of(tmp_path, plugins=["axolotl.integrations.kernels.KernelsPlugin"])
    with pytest.raises(UserError, match="liger_cross_entropy"):
        cfg_of(tmp_path, liger_cross_entropy=True, liger_fused_linear_cross_entropy=True)


CCE = "axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin"


def test_cut_cross_entropy_runs_as_liger_fused_linear_cross_entropy(tmp_path, monkeypatch):
    """axolotl's CutCrossEntropyPlugin: the same loss without the full logits, through the Liger kernel."""
    cfg = cfg_of(tmp_path, plugins=[CCE, "axolotl.integrations.liger.LigerPlugin"], liger_rms_norm=True)
    notes: list[str] = []
    assert speedups.liger_arguments(cfg, on_gpu=False, notes=notes) == {}  # CPU: off, with a note saying so
    assert notes == [
        "liger_rms_norm, cut_cross_entropy: skipped on CPU (Liger's Triton kernels need a CUDA GPU; "
        "cut_cross_entropy would run as Liger's fused linear cross-entropy)"
    ]
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "liger_kernel" else real(name, *a)
    )
    with pytest.raises(UserError, match=r"^liger_rms_norm: needs the liger-kernel package"):
        speedups.liger_arguments(cfg, on_gpu=True, notes=[])
    with pytest.raises(UserError, match=r"^cut_cross_entropy: needs the liger-kernel package"):
        speedups.liger_arguments(cfg_of(tmp_path, plugins=[CCE]), on_gpu=True, notes=[])
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: object() if name == "liger_kernel" else real(name, *a)
    )
    notes = []
    out = speedups.liger_arguments(cfg, on_gpu=True, notes=notes)
    assert out["use_liger_kernel"] is True
    assert {k for k, on in out["liger_kernel_config"].items() if on} == {
        "rms_norm",
        "fused_linear_cross_entropy",
    }
    assert notes and "cut_cross_entropy: computed by Liger's fused linear cross-entropy kernel" in notes[0]
    off = cfg_of(tmp_path, plugins=[CCE], cut_cross_entropy=False)
    assert speedups.liger_arguments(off, on_gpu=True, notes=[]) == {}


def test_offloaded_activations_keep_gradients_exact(tiny_model_dir):
    """The offload hooks on CPU-as-device: checkpointed layer inputs go through them, gradients unchanged."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    batch = batching.PackedCollator()(rows(tokenizer))
    grads = []
    offloaded: list[int] = []
    for offload in (False, True):
        model.zero_grad()
        hidden = model.config.hidden_size
        ctx = (
            speedups.offload_activations(hidden, "cpu", pin_memory=False, counter=offloaded)
            if offload
            else None
        )
        with ctx or torch.enable_grad():
            loss = model(**batch).loss
        loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    tokens = batch["input_ids"].numel()
    # at least one hidden state per checkpointed layer went through the hooks; logits (vocab-wide) did not
    assert len(offloaded) >= model.config.num_hidden_layers and set(offloaded) == {tokens * hidden}
