"""Multi-process training on CPU (gloo): DDP, DeepSpeed ZeRO-1/2/3 and a 2-node run simulated on localhost.

Each run trains the same LoRA on the tiny model with the same global batch (2 processes x 2 rows) as one
in-process reference run (1 process x 4 rows); the per-step losses must match it to LOSS_TOL. These are the
suite's most expensive tests (~15-30 s each: two Python processes importing torch on a 2-core machine), so
they are few: one reference shared by all, 4 steps, 48 short rows. Every launch is bounded by a timeout
that kills its whole process group (FACTS.md: rarely a process aborts at exit and its peer waits).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from finetune import config
from finetune import model as model_module
from finetune.config import deepspeed
from finetune.errors import UserError
from finetune.train import distributed
from launching import (
    LOSS_TOL,
    ROOT,
    WEIGHT_TOL,
    ZERO,
    adapter,
    card_hyperparameters,
    free_port,
    launch,
    losses,
    run_cfg,
)  # fmt: skip

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference(tiny_model_dir, tmp_path_factory) -> Path:
    """One process, 4 rows a step: the global batch of every 2-process run below."""
    import torch

    from finetune import train

    tmp = tmp_path_factory.mktemp("reference")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train.run(config.validate(run_cfg(tiny_model_dir, tmp, micro_batch_size=4)))
    finally:
        torch.set_num_threads(threads)


def check_matches(out: Path, reference: Path) -> None:
    assert len(losses(out)) == len(losses(reference)) == 4
    assert losses(out) == pytest.approx(losses(reference), abs=LOSS_TOL, rel=0)
    assert list(out.rglob("adapter_model.safetensors")) == [out / "adapter_model.safetensors"]
    mine, ref = adapter(out), adapter(reference)
    assert mine.keys() == ref.keys()
    for key, value in mine.items():  # full tensors: ZeRO-3 gathered its shards before saving
        assert value.shape == ref[key].shape and (value - ref[key]).abs().max() <= WEIGHT_TOL, key


@pytest.mark.parametrize(
    "name, deepspeed", [("ddp", None), ("zero2", ZERO[2]), ("zero3", ZERO[3])], ids=["ddp", "zero2", "zero3"]
)
def test_two_processes_match_one(name, deepspeed, tiny_model_dir, tmp_path, reference, write_config):
    """`finetune train --num-processes 2` (torchrun underneath); ZeRO-3 loads the base already sharded.
    The DDP run also logs to W&B (offline): one run, from rank 0."""
    extra = (
        {"deepspeed": deepspeed}
        if deepspeed
        else {"wandb_project": "finetune-tests", "wandb_mode": "offline"}
    )
    cfg = write_config(run_cfg(tiny_model_dir, tmp_path, **extra))
    out = tmp_path / "out"
    overwrite = []
    if name == "ddp":  # --overwrite of an old run: rank 0 moves it away, and no rank sees its files after
        (out / "checkpoint-9").mkdir(parents=True)
        shutil.copy(reference / "adapter_model.safetensors", out / "checkpoint-9")
        (out / "all_results.json").write_text('{"old_run": true}')
        (out / "eval_results.json").write_text('{"eval_loss": 9.9}')  # no evaluation here would replace it
        overwrite = ["--overwrite"]
    (log,) = launch([["train", str(cfg), "--num-processes", "2", *overwrite]], tmp_path)
    check_matches(out, reference)
    assert not list(tmp_path.glob(".out.*")) and not (out / "eval_results.json").exists()
    assert log.count("\ndone\n") == 1 and log.count("outputs: ") == 1  # only rank 0 prints the summary
    results = json.loads((out / "all_results.json").read_text())
    assert results["world_size"] == 2 and results["total_train_batch_size"] == 4 and "old_run" not in results
    assert results["distributed_type"] == ("multi_cpu" if name == "ddp" else "deepspeed")
    assert results.get("zero_stage") == (None if name == "ddp" else int(name[-1]))
    hp = card_hyperparameters(out)
    assert hp["num_devices"] == "2" and hp["total_train_batch_size"] == "4" and hp["train_batch_size"] == "2"
    assert hp["distributed_type"] == results["distributed_type"]
    assert not list((tmp_path / "torch_extensions").rglob("*shm*"))  # the 75-95 s CPU op was not built
    if name == "ddp":
        (run,) = (out / "wandb").glob("offline-run-*")
        (record,) = run.glob("run-*.wandb")
        assert b"train/loss" in record.read_bytes()


def test_two_nodes_on_localhost_zero1(tiny_model_dir, tmp_path, reference, write_config):
    """Two `--nnodes 2 --node-rank 0|1` commands (one process each) rendezvous at 127.0.0.1 like 2 machines."""
    cfg = write_config(run_cfg(tiny_model_dir, tmp_path, deepspeed=ZERO[1]))
    port = str(free_port())
    node = ["train", str(cfg), "--nnodes", "2", "--master-addr", "127.0.0.1", "--master-port", port]
    logs = launch([[*node, "--node-rank", "0"], [*node, "--node-rank", "1"]], tmp_path)
    check_matches(tmp_path / "out", reference)
    assert sum(log.count("outputs: ") for log in logs) == 1
    results = json.loads((tmp_path / "out" / "all_results.json").read_text())
    assert (results["world_size"], results["distributed_type"], results["zero_stage"]) == (2, "deepspeed", 1)


def test_qlora_zero3_in_one_process(tiny_model_dir, tmp_path, write_config):
    """QLoRA + ZeRO-3 through `--num-processes 1` (the single-GPU benchmark's path) equals plain QLoRA."""
    from finetune import train

    qlora = {"load_in_4bit": True, "adapter": "qlora", "micro_batch_size": 4}
    plain = train.run(config.validate(run_cfg(tiny_model_dir, tmp_path / "plain", **qlora)))
    cfg = write_config(run_cfg(tiny_model_dir, tmp_path, deepspeed=ZERO[3], **qlora))
    (log,) = launch([["train", str(cfg), "--num-processes", "1"]], tmp_path)
    assert "one-process group" in log
    out = tmp_path / "out"
    assert losses(out) == pytest.approx(losses(plain), abs=LOSS_TOL, rel=0)
    results = json.loads((out / "all_results.json").read_text())
    assert (results["world_size"], results["distributed_type"], results["zero_stage"]) == (1, "deepspeed", 3)


def test_zero3_with_new_tokens_saves_whole_embeddings(tiny_model_dir, tmp_path, write_config, one_thread):
    """New tokens under ZeRO-3: the resized embed_tokens/lm_head (modules_to_save) are gathered whole when
    saved, and the 2-process run matches one process with the same global batch."""
    from finetune import train

    tokens = {"tokens": ["<|ticker|>", "<|filing|>"]}
    plain = train.run(
        config.validate(run_cfg(tiny_model_dir, tmp_path / "plain", micro_batch_size=4, **tokens))
    )
    cfg = write_config(run_cfg(tiny_model_dir, tmp_path, deepspeed=ZERO[3], **tokens))
    launch([["train", str(cfg), "--num-processes", "2"]], tmp_path)
    out = tmp_path / "out"
    assert losses(out) == pytest.approx(losses(plain), abs=LOSS_TOL, rel=0)
    mine, ref = adapter(out), adapter(plain)
    whole = [k for k in ref if "modules_to_save" in k]
    assert len(whole) == 2 and all(mine[k].shape == ref[k].shape == (1026, 64) for k in whole)
    for key in whole:
        assert (mine[key] - ref[key]).abs().max() <= WEIGHT_TOL, key


# ---------------------------------------------------------------- the DeepSpeed config, without training


def test_deepspeed_config_gets_auto_values_for_what_the_trainer_fills(tmp_path):
    inline = distributed.for_trainer({"zero_optimization": {"stage": 2}})
    assert inline["train_batch_size"] == inline["train_micro_batch_size_per_gpu"] == "auto"
    assert inline["gradient_clipping"] == inline["bf16"]["enabled"] == inline["fp16"]["enabled"] == "auto"
    assert deepspeed.zero_stage(inline) == 2 and deepspeed.zero_stage(None) is None
    shipped = distributed.for_trainer(ZERO[3])
    assert shipped == deepspeed.deepspeed_config(ZERO[3])  # the shipped files already say "auto"
    bad = tmp_path / "bad.json"
    bad.write_text('{"zero_optimization": {\n  "stage": 3,,\n}}')
    with pytest.raises(UserError, match=r"deepspeed: .*bad.json:2: not valid JSON"):
        deepspeed.deepspeed_config(str(bad))


def test_every_shipped_deepspeed_config_is_valid_json_with_a_stage():
    for path in sorted((ROOT / "deepspeed_configs").glob("*.json")):
        assert deepspeed.zero_stage(str(path)) in (1, 2, 3), path.name


def test_fixed_deepspeed_values_that_contradict_the_config_are_refused(tiny_model_dir):
    from finetune.model import precision

    cfg = config.validate(
        {
            **run_cfg(tiny_model_dir, Path("/tmp")),
            "deepspeed": str(ROOT / "deepspeed_configs" / "zero3_bf16.json"),
        }
    )
    prec = precision(cfg)
    if prec.bf16:
        pytest.skip("this machine trains in bf16: zero3_bf16.json agrees with the config")
    with pytest.raises(UserError, match=r'bf16.enabled is true, but this run\'s value is false .* "auto"'):
        distributed.check_deepspeed(cfg, prec)
    fixed = cfg.model_copy(
        update={"deepspeed": {"train_micro_batch_size_per_gpu": 3, "bf16": {"enabled": False}}}
    )
    with pytest.raises(UserError, match="train_micro_batch_size_per_gpu is 3, but this run's value is 2"):
        distributed.check_deepspeed(fixed, prec)
    distributed.check_deepspeed(cfg.model_copy(update={"deepspeed": ZERO[3]}), prec)  # all "auto": fine


def test_4bit_storage_follows_the_training_dtype_under_zero3(tiny_model_dir):
    cfg = config.validate({**run_cfg(tiny_model_dir, Path("/tmp")), "load_in_4bit": True, "adapter": "qlora"})
    assert model_module.quant_storage(cfg, "bfloat16") == "uint8"  # bitsandbytes' default without ZeRO-3
    assert model_module.quant_storage(cfg.model_copy(update={"deepspeed": ZERO[2]}), "bfloat16") == "uint8"
    zero3 = cfg.model_copy(update={"deepspeed": ZERO[3]})
    assert model_module.quant_storage(zero3, "bfloat16") == "bfloat16"
    assert (
        model_module.quant_storage(zero3.model_copy(update={"bnb_4bit_quant_storage": "float16"}), "bfloat16")
        == "float16"
    )
