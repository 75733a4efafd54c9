"""FSDP2 on CPU (2 processes, gloo): the same losses as one process, SIGTERM + --resume equal to an uninterrupted
run, an adapter saved whole that loads and merges, and the config keys read as axolotl means them.

The engine is accelerate's FSDP2 through the HF Trainer (train/fsdp.py turns it on for CPU processes, where
accelerate would fall back to DDP). Launches reuse test_distributed's helpers: each costs ~10-15 s here.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import one_thread_run
from finetune import config
from finetune.config.fsdp import fsdp_settings
from launching import TIMEOUT, adapter, card_hyperparameters, free_port, launch, losses, run_cfg

QA = str(Path(__file__).resolve().parents[2] / "examples" / "finance_qa.jsonl")
FSDP = {"fsdp_version": 2, "fsdp_config": {"transformer_layer_cls_to_wrap": "LlamaDecoderLayer"}}
STEPS = 10
LOSS_TOL = 1e-5  # the bound; observed <= 1e-6 over the first 25 steps at lr 0.01


def one_process_reference(tiny_model_dir, tmp: Path, steps: int, **over) -> Path:
    cfg = run_cfg(tiny_model_dir, tmp, micro_batch_size=4, max_steps=steps, **over, **FSDP)
    return one_thread_run(config.validate(cfg))


@pytest.mark.slow
def test_fsdp2_two_processes_match_one_and_the_adapter_loads_and_merges(
    tiny_model_dir, tmp_path, write_config
):
    reference = one_process_reference(tiny_model_dir, tmp_path / "reference", STEPS)
    cfg = write_config(run_cfg(tiny_model_dir, tmp_path, max_steps=STEPS, **FSDP))
    out = tmp_path / "out"
    (log,) = launch([["train", str(cfg), "--num-processes", "2"]], tmp_path)

    assert len(losses(out)) == STEPS
    assert losses(out) == pytest.approx(losses(reference), abs=LOSS_TOL, rel=0)
    results = json.loads((out / "all_results.json").read_text())
    assert (
        results["distributed_type"] == "fsdp" and results["fsdp_version"] == 2 and results["world_size"] == 2
    )
    hp = card_hyperparameters(out)
    assert hp["fsdp_version"] == "2" and hp["num_devices"] == "2" and hp["distributed_type"] == "fsdp"

    # the final adapter is whole (gathered from the shards), not a rank's half
    mine, ref = adapter(out), adapter(reference)
    assert mine.keys() == ref.keys()
    for key, value in mine.items():
        assert value.shape == ref[key].shape and (value - ref[key]).abs().max() <= 2e-4, key

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(out))
    assert model.peft_config["default"].r == 8

    from finetune.outputs import merge

    difference = merge.merge_command(out, tmp_path / "merged", dtype="fp32")
    assert difference <= merge.CHECK_TOLERANCE["fp32"]
    assert (tmp_path / "merged" / "model.safetensors").is_file()


def train_with_probe(cfg: Path, tmp: Path) -> list[dict]:
    """`train.run` in 2 processes under torchrun (what `finetune train --num-processes 2` starts), with
    fsdp_probe.py's callback: per process, what FSDP2 made of each parameter after the first step."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "LOCAL_", "WORLD_", "MASTER_"))}
    env.update(HF_HUB_OFFLINE="1", WANDB_MODE="disabled", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    prefix = tmp / "probe"
    argv = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
            str(free_port()), str(Path(__file__).resolve().parents[1] / "fsdp_probe.py"), str(cfg), str(prefix)]  # fmt: skip
    proc = subprocess.Popen(argv, cwd=tmp, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    try:
        output = proc.communicate(timeout=TIMEOUT)[0]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"the probed FSDP run outlived {TIMEOUT} s")
    assert proc.returncode == 0, output[-4000:]
    return [json.loads(Path(f"{prefix}.{rank}.json").read_text()) for rank in (0, 1)]


@pytest.mark.slow
def test_qlora_fsdp2_shards_the_4bit_base_on_cpu_and_matches_one_process(
    tiny_model_dir, tmp_path, write_config
):
    """bitsandbytes' 4-bit weights, packed into the training dtype (bnb_4bit_quant_storage), shard as DTensors
    on CPU too: each process holds half of every packed NF4 weight (and half of everything else), and the run
    trains to the one-process losses. Stored in uint8 (the default without FSDP) they stay whole, plain tensors
    in every process: seen here with quant_storage's FSDP branch removed."""
    reference = one_process_reference(tiny_model_dir, tmp_path / "reference", 4, adapter="qlora")
    cfg = write_config(run_cfg(tiny_model_dir, tmp_path, adapter="qlora", **FSDP))
    ranks = train_with_probe(cfg, tmp_path)
    out = tmp_path / "out"
    assert losses(out) == pytest.approx(losses(reference), abs=LOSS_TOL, rel=0)
    results = json.loads((out / "all_results.json").read_text())
    assert results["distributed_type"] == "fsdp"
    assert "quantization: bitsandbytes 4-bit" in (out / "README.md").read_text()

    first, second = ranks
    packed = {name: p for name, p in first.items() if p["layer"] == "Linear4bit"}
    assert len(packed) == 2 * 7  # every linear layer of both decoder layers is 4-bit
    norm_dtype = first["base_model.model.model.norm.weight"]["dtype"]
    for name, p in first.items():  # every parameter, 4-bit ones included, is a DTensor split in two
        assert p["dtensor"] and second[name]["dtensor"], name
        assert (
            p["local_numel"] + second[name]["local_numel"] == p["numel"] and p["local_numel"] < p["numel"]
        ), name
    for name, p in packed.items():  # NF4 packed two to a byte into the training dtype, not uint8
        assert p["dtype"] == norm_dtype == "torch.float32", name


def _train_until_sigterm(cfg: Path, tmp: Path, after_step: int) -> tuple[int, str]:
    """Start a 2-process run, SIGTERM every process once `after_step` is logged; (exit code, output)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "LOCAL_", "WORLD_", "MASTER_"))}
    env.update(HF_HUB_OFFLINE="1", WANDB_MODE="disabled", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.Popen(
        [sys.executable, "-m", "finetune.cli", "train", str(cfg), "--num-processes", "2"],
        cwd=tmp, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    metrics = tmp / "out" / "metrics.jsonl"
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            if metrics.is_file():
                steps = [json.loads(line).get("step", 0) for line in metrics.read_text().splitlines() if line]
                if steps and max(steps) >= after_step:
                    os.killpg(proc.pid, signal.SIGTERM)  # what a cluster scheduler does: every process
                    break
            time.sleep(0.005)
        return proc.wait(timeout=240), proc.stdout.read()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.slow
def test_fsdp2_sigterm_then_resume_equals_an_uninterrupted_run(tiny_model_dir, tmp_path, write_config):
    steps = 40  # room for the signal to land mid-run: each step is ~0.06 s here
    over = dict(max_steps=steps, save_strategy="steps", save_steps=100, **FSDP)
    whole = write_config(run_cfg(tiny_model_dir, tmp_path / "whole", **over), "whole.yaml")
    (tmp_path / "whole").mkdir(exist_ok=True)
    launch([["train", str(whole), "--num-processes", "2"]], tmp_path)

    cut = write_config(run_cfg(tiny_model_dir, tmp_path, **over), "cut.yaml")
    code, output = _train_until_sigterm(cut, tmp_path, after_step=2)
    out = tmp_path / "out"
    (checkpoint,) = out.glob("checkpoint-*")
    assert code != 0 and not (out / "adapter_model.safetensors").exists(), output[-3000:]
    stopped = int(checkpoint.name.split("-")[1])
    assert 2 <= stopped < steps
    assert len(list((checkpoint / "pytorch_model_fsdp_0").glob("*.distcp"))) == 2  # one shard per process

    launch([["train", str(cut), "--num-processes", "2", "--resume"]], tmp_path)
    assert losses(out) == pytest.approx(losses(tmp_path / "whole" / "out"), abs=1e-6, rel=0)
    mine, whole_adapter = adapter(out), adapter(tmp_path / "whole" / "out")
    for key, value in mine.items():
        assert (value - whole_adapter[key]).abs().max() <= 1e-6, key


def settings(**keys):
    cfg = config.validate({"base_model": "m", "adapter": "lora", "datasets": [{"path": QA}], **keys})
    return fsdp_settings(cfg)


def problems(**keys) -> list[str]:
    base = {"base_model": "m", "adapter": "lora", "datasets": [{"path": QA}]}
    with pytest.raises(config.ConfigError) as exc:
        config.validate({**base, **keys})
    return exc.value.problems


def test_axolotl_fsdp_keys_read_as_fsdp2():
    s, _, notes = settings(
        fsdp=["full_shard", "auto_wrap"],
        fsdp_config={
            "fsdp_offload_params": True, "fsdp_state_dict_type": "SHARDED_STATE_DICT",
            "fsdp_transformer_layer_cls_to_wrap": "LlamaDecoderLayer,MistralDecoderLayer",
            "fsdp_use_orig_params": False, "fsdp_sync_module_states": True,
            "fsdp_sharding_strategy": "SHARD_GRAD_OP", "fsdp_version": 2,
        },
    )  # fmt: skip
    assert s["offload_params"] and s["state_dict_type"] == "SHARDED_STATE_DICT"
    assert s["transformer_layer_cls_to_wrap"] == ["LlamaDecoderLayer", "MistralDecoderLayer"]
    assert s["reshard_after_forward"] is False  # SHARD_GRAD_OP: keep the gathered weights until backward
    assert any("use_orig_params" in n for n in notes) and any("sync_module_states" in n for n in notes)
    s, _, _ = settings(
        fsdp_version=2, fsdp_config={"reshard_after_forward": True, "activation_checkpointing": True}
    )
    assert (
        s["reshard_after_forward"]
        and s["activation_checkpointing"]
        and s["state_dict_type"] == "FULL_STATE_DICT"
    )
    assert settings()[0] is None


@pytest.mark.parametrize(
    "keys, where, words",
    [
        ({"fsdp_version": 1}, "fsdp_version", "use 2"),
        ({"fsdp_config": {"fsdp_version": 1}}, "fsdp_config.fsdp_version", "use 2"),
        ({"fsdp_version": 2, "deepspeed": {"zero_optimization": {"stage": 2}}}, "deepspeed", "not both"),
        ({"fsdp": ["hybrid_shard"]}, "fsdp[0]", "no FSDP2 meaning"),
        ({"fsdp_version": 2, "fsdp_config": {"sharding_strategy": "NO_SHARD"}}, "sharding_strategy", "FULL_SHARD"),
        ({"fsdp_version": 2, "fsdp_config": {"forward_prefetch": True}}, "forward_prefetch", "no forward prefetch"),
        ({"fsdp_version": 2, "fsdp_config": {"reshard_after_forwad": True}}, "reshard_after_forwad", "unknown"),
        ({"fsdp_version": 2, "fsdp_config": {"offload_params": "yes"}}, "offload_params", "true or false"),
        ({"fsdp_version": 2, "rl": "dpo"}, "rl", "supervised fine-tuning only"),
    ],
)  # fmt: skip
def test_fsdp_settings_without_an_fsdp2_meaning_are_one_line_each(keys, where, words):
    (line,) = [p for p in problems(**keys) if where.split(".")[-1].split("[")[0] in p]
    assert words in line and "\n" not in line


def test_qlora_under_fsdp_stores_4bit_weights_in_the_training_dtype(tiny_model_dir):
    """FSDP shards by dtype: the NF4 weights packed into the training dtype shard like the rest (Answer.AI's
    FSDP-QLoRA); the test above sees them sharded on CPU. Without FSDP they stay packed in uint8."""
    from finetune.model import quant_storage

    cfg = config.validate(
        {"base_model": str(tiny_model_dir), "adapter": "qlora", "datasets": [{"path": QA}], **FSDP}
    )
    assert quant_storage(cfg, "bfloat16") == "bfloat16"
    plain = config.validate(
        {"base_model": str(tiny_model_dir), "adapter": "qlora", "datasets": [{"path": QA}]}
    )
    assert quant_storage(plain, "bfloat16") == "uint8"
