"""Where finetune relies on a library's private detail (no public API exists), each use is one named function
with a comment; these tests fail loudly, naming the function, when the library changes under it."""

from __future__ import annotations

import inspect

import pytest


def parameters(func) -> list[str]:
    return list(inspect.signature(func).parameters)


def test_cli_run_exit_handlers_has_cpythons_atexit_runner():
    import atexit

    assert callable(getattr(atexit, "_run_exitfuncs", None)), (
        "cli.run_exit_handlers: atexit._run_exitfuncs is gone"
    )


def test_model_new_head_is_expected_finds_trls_context_manager():
    from trl.trainer.reward_trainer import suppress_seqcls_warning  # model.new_head_is_expected

    with suppress_seqcls_warning():
        pass


def test_train_preference_dpo_override_matches_trls_prepare_dataset():
    from trl import DPOTrainer

    assert parameters(DPOTrainer._prepare_dataset)[1:] == [
        "dataset",
        "processing_class",
        "args",
        "dataset_name",
    ], "train.preference FinetuneDPOTrainer._prepare_dataset overrides a TRL method whose signature changed"


def test_model_disable_cpu_bf16_repack_flag_still_exists_in_bitsandbytes():
    bnb = pytest.importorskip("bitsandbytes")
    import torch

    layer = bnb.nn.Linear4bit(64, 64, compute_dtype=torch.float32)
    assert hasattr(layer, "support_avx512bf16_for_cpu"), "model.disable_cpu_bf16_repack: the flag is gone"
    assert "support_avx512bf16_for_cpu" in inspect.getsource(bnb.nn.Linear4bit.forward)


def test_distributed_skip_shm_op_still_reaches_deepspeeds_op_table():
    deepspeed_comm = pytest.importorskip("deepspeed.comm.torch")
    import deepspeed.ops

    assert isinstance(deepspeed.ops.__compatible_ops__, dict)
    assert "__compatible_ops__" in inspect.getsource(deepspeed_comm.build_shm_op), (
        "train.distributed.skip_shm_op: DeepSpeed no longer consults its op table before building the shm op"
    )


def test_train_trainer_overrides_match_the_trainers_private_methods():
    from transformers import Trainer

    assert parameters(Trainer._track_num_input_tokens)[1:] == ["inputs"], (
        "train.trainer FinetuneTrainer._track_num_input_tokens overrides a Trainer method whose signature changed"
    )


def test_train_fsdp_enable_on_cpu_still_needed_and_reaches_accelerates_state():
    """train/fsdp.enable_on_cpu: accelerate turns FSDP on only for the process-group types listed before
    `self.distributed_type = DistributedType.FSDP` (GPU-like ones); when MULTI_CPU joins them, drop the function."""
    import accelerate.state
    from accelerate import PartialState

    source = inspect.getsource(accelerate.state.AcceleratorState.__init__)
    before = source.split("self.distributed_type = DistributedType.FSDP")[0]
    branch = before[before.rindex("elif self.distributed_type in [") :]
    assert "DistributedType.MULTI_GPU" in branch, "train/fsdp.enable_on_cpu: accelerate's FSDP branch moved"
    assert "MULTI_CPU" not in branch, "train/fsdp.enable_on_cpu: accelerate now runs FSDP on CPU itself"
    assert "self.fsdp_plugin = fsdp_plugin" in source, (
        "train/fsdp.enable_on_cpu: AcceleratorState.fsdp_plugin"
    )
    assert "distributed_type" in PartialState._known_attrs, "train/fsdp.enable_on_cpu: PartialState field"


def test_train_pair_methods_overrides_match_trls_methods():
    from trl import KTOTrainer
    from trl.experimental.cpo import CPOTrainer
    from trl.experimental.orpo import ORPOTrainer

    assert parameters(KTOTrainer._prepare_dataset)[1:] == [
        "dataset",
        "processing_class",
        "args",
        "dataset_name",
    ], (
        "train.kto_orpo_simpo FinetunePairTrainer._prepare_dataset overrides a KTOTrainer method whose signature changed"
    )
    for trainer in (CPOTrainer, ORPOTrainer):
        assert parameters(trainer.tokenize_row)[1:] == ["feature", "model"], (
            f"train.kto_orpo_simpo FinetunePairTrainer.tokenize_row overrides {trainer.__name__}.tokenize_row, changed"
        )
    # the KL completions finetune adds for KTO are read by TRL under this name
    assert "KL_completion_ids" in inspect.getsource(KTOTrainer._prepare_dataset)


def test_outputs_merge_forget_bnb_loading_steps_reaches_transformers_weight_conversions(
    tiny_model_dir, tmp_path
):
    """outputs/merge.forget_bnb_loading_steps edits `model._weight_conversions`, the steps from_pretrained used,
    which save_pretrained reverses (core_model_loading.revert_weight_conversion). A pre-quantized checkpoint
    loads with a bitsandbytes deserialize step there; transformers 5.17-5.23 keep it through `dequantize()`
    and the reversal then raises NotImplementedError (5.24 drops the attribute in dequantize itself: once the
    lowest supported transformers does, the function can go)."""
    pytest.importorskip("bitsandbytes")
    import torch
    import transformers.core_model_loading as loading
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    from transformers.integrations.bitsandbytes import Bnb4bitDeserialize, Bnb8bitDeserialize  # noqa: F401

    from finetune.outputs.merge import forget_bnb_loading_steps

    assert '"_weight_conversions"' in inspect.getsource(loading.revert_weight_conversion), (
        "outputs/merge.forget_bnb_loading_steps: save_pretrained no longer reads model._weight_conversions"
    )
    four_bit = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32)
    AutoModelForCausalLM.from_pretrained(
        tiny_model_dir, quantization_config=four_bit, dtype=torch.float32
    ).save_pretrained(tmp_path / "bnb-4bit")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "bnb-4bit", dtype=torch.float32)
    steps = model._weight_conversions
    assert any(isinstance(op, Bnb4bitDeserialize) for s in steps for op in getattr(s, "operations", ())), (
        "outputs/merge.forget_bnb_loading_steps: a pre-quantized load no longer records Bnb4bitDeserialize steps"
    )
    model = model.dequantize(dtype=torch.float32)
    model._weight_conversions = steps  # as transformers 5.17-5.23 leave it
    with pytest.raises(NotImplementedError):
        model.save_pretrained(tmp_path / "kept")
    forget_bnb_loading_steps(model)
    model.save_pretrained(tmp_path / "merged")  # the deserialize steps gone, the plain weights save
    assert (tmp_path / "merged" / "model.safetensors").is_file()
