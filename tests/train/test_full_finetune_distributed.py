"""Full fine-tuning (no adapter) on 2 CPU processes: DeepSpeed ZeRO-3 and FSDP2 shard the whole model, log the
same losses as one process with the same global batch, and save the whole model (gathered, not a rank's shard).
Each launch costs ~15 s here; the helpers are test_distributed's."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import one_thread_run
from finetune import config
from launching import LOSS_TOL, ZERO, launch, losses, run_cfg

pytestmark = pytest.mark.slow
FSDP = {"fsdp_version": 2, "fsdp_config": {"transformer_layer_cls_to_wrap": "LlamaDecoderLayer"}}
WEIGHT_TOL = 2e-4  # 4 Adam steps at lr 0.01 (test_distributed's bound for adapters)


def full_cfg(base: Path, tmp: Path, **over) -> dict:
    raw = run_cfg(base, tmp, **over)
    for key in ("adapter", "lora_r", "lora_alpha", "lora_dropout", "lora_target_linear"):
        raw.pop(key)
    return raw


def model_state(out: Path, name: str = "model.safetensors") -> dict:
    from safetensors.torch import load_file

    return load_file(str(out / name))


@pytest.fixture(scope="module")
def reference(tiny_model_dir, tmp_path_factory) -> Path:
    """One plain process, 4 rows a step: the global batch of the 2-process runs."""
    tmp = tmp_path_factory.mktemp("reference")
    return one_thread_run(config.validate(full_cfg(tiny_model_dir, tmp, micro_batch_size=4)))


@pytest.mark.parametrize("engine", ["zero3", "fsdp2"])
def test_full_fine_tune_on_two_processes_matches_one(
    engine, tiny_model_dir, tmp_path, write_config, reference
):
    extra = {"deepspeed": ZERO[3]} if engine == "zero3" else FSDP
    cfg = write_config(full_cfg(tiny_model_dir, tmp_path, **extra))
    out = tmp_path / "out"
    launch([["train", str(cfg), "--num-processes", "2"]], tmp_path)
    assert len(losses(out)) == 4
    assert losses(out) == pytest.approx(losses(reference), abs=LOSS_TOL, rel=0)
    mine, ref = model_state(out), model_state(reference)
    assert mine.keys() == ref.keys() and not (out / "adapter_config.json").exists()
    for key, value in mine.items():  # whole tensors, gathered from the shards
        assert value.shape == ref[key].shape and (value - ref[key]).abs().max() <= WEIGHT_TOL, key


UNFROZEN = ["^model.layers.0.mlp.*", "^model.norm.weight$"]


@pytest.fixture(scope="module")
def unfrozen_reference(tiny_model_dir, tmp_path_factory) -> Path:
    """LoRA with unfrozen_parameters beside it, one plain process, the 2-process runs' global batch."""
    tmp = tmp_path_factory.mktemp("unfrozen-reference")
    raw = run_cfg(tiny_model_dir, tmp, micro_batch_size=4, unfrozen_parameters=UNFROZEN)
    return one_thread_run(config.validate(raw))


@pytest.mark.parametrize("engine", ["ddp", "zero2"])
def test_unfrozen_beside_lora_on_two_processes_matches_one(
    engine, tiny_model_dir, tmp_path, write_config, unfrozen_reference
):
    """The unfrozen base weights train under DDP / ZeRO-2 (ZeRO-1 partitions the same optimizer states less)
    as in one process, and the saved file holds them whole."""
    from finetune.model.unfrozen import UNFROZEN_FILE

    extra = {"deepspeed": ZERO[2]} if engine == "zero2" else {}
    cfg = write_config(run_cfg(tiny_model_dir, tmp_path, unfrozen_parameters=UNFROZEN, **extra))
    out = tmp_path / "out"
    launch([["train", str(cfg), "--num-processes", "2"]], tmp_path)
    assert losses(out) == pytest.approx(losses(unfrozen_reference), abs=LOSS_TOL, rel=0)
    for name in (UNFROZEN_FILE, "adapter_model.safetensors"):
        mine, ref = model_state(out, name), model_state(unfrozen_reference, name)
        assert mine.keys() == ref.keys() and len(mine) > 0
        for key, value in mine.items():
            assert value.shape == ref[key].shape and (value - ref[key]).abs().max() <= WEIGHT_TOL, key
    trained, base = model_state(out, UNFROZEN_FILE), model_state(tiny_model_dir)
    assert all(
        (trained[k] - base[k]).abs().max() > 0 for k in trained
    )  # each trained (and equally on both ranks)
