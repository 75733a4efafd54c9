"""FSDP2 as the HF Trainer runs it: its arguments, FSDP on CPU processes, and the final adapter saved whole.

The sharding itself is accelerate's (`fully_shard` through the Trainer's `fsdp` / `fsdp_config` arguments);
finetune adds three things:

- `trainer_arguments`: the config's FSDP keys (config/fsdp.py) as TrainingArguments' `fsdp_config`;
- `enable_on_cpu`: accelerate turns FSDP on only for GPU-like process groups (MULTI_GPU, MULTI_XPU, ...); on
  CPU processes (gloo) it silently falls back to DDP. FSDP2 itself trains on CPU (FACTS.md), so a run that asks
  for it gets it there too — which is also how the CPU tests exercise the same engine a GPU run uses;
- `full_adapter_state`: the adapter's weights gathered whole (`DTensor.full_tensor`, collective) for peft's
  `save_pretrained`. accelerate's full state dict (`get_model_state_dict(..., cpu_offload=True)`) returns
  the shards unchanged on CPU, which peft cannot save, and would gather the frozen base too.
"""

from __future__ import annotations

from finetune.config import Config
from finetune.config.fsdp import fsdp_settings


def trainer_arguments(cfg: Config, world_size: int, on_gpu: bool, notes: list[str]) -> dict:
    """`fsdp` / `fsdp_config` for TrainingArguments, or {} when the config does not ask for FSDP."""
    settings, _, setting_notes = fsdp_settings(cfg)
    if settings is None:
        return {}
    notes += setting_notes
    if world_size == 1:
        notes.append("fsdp: one process, nothing to shard: training without FSDP")
        return {}
    state_dict_type = settings["state_dict_type"]
    if not on_gpu:
        if state_dict_type == "FULL_STATE_DICT":
            # measured here (torch 2.13, gloo): a FULL_STATE_DICT checkpoint is written from unsharded
            # DTensors and resuming from it hangs; sharded checkpoints resume exactly
            notes.append(
                "fsdp_config.state_dict_type: checkpoints are sharded on CPU (FULL_STATE_DICT needs a GPU)"
            )
            state_dict_type = "SHARDED_STATE_DICT"
        if settings["offload_params"]:
            notes.append("fsdp_config.offload_params: no effect on CPU (the parameters are in RAM already)")
    checkpointing = settings["activation_checkpointing"]
    if checkpointing and cfg.gradient_checkpointing:
        notes.append(
            "fsdp_config.activation_checkpointing: gradient_checkpointing already recomputes activations "
            "(once, not twice)"
        )
        checkpointing = False
    fsdp_config = {
        "version": 2,
        "reshard_after_forward": settings["reshard_after_forward"],
        "cpu_offload": settings["offload_params"] and on_gpu,
        "cpu_ram_efficient_loading": settings["cpu_ram_efficient_loading"],
        "state_dict_type": state_dict_type,
        "auto_wrap_policy": settings["auto_wrap_policy"],
        "activation_checkpointing": checkpointing,
    }
    if settings["transformer_layer_cls_to_wrap"]:
        fsdp_config["transformer_layer_cls_to_wrap"] = settings["transformer_layer_cls_to_wrap"]
    return {"fsdp": True, "fsdp_config": fsdp_config}


def enable_on_cpu(trainer) -> None:
    """Make the Trainer's accelerator run FSDP on CPU processes, where accelerate would run DDP instead.

    Called right after `Trainer.create_accelerator_and_postprocess`, before any model is prepared. It sets the
    fields accelerate's GPU branch sets (`distributed_type` in `AcceleratorState` and `PartialState`, which
    share it; `fsdp_plugin`) and the Trainer's flag. tests/test_library_guards.py fails when accelerate starts doing
    this itself (then this function can go) or renames them.
    """
    from accelerate import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    plugin_args = trainer.args.fsdp_plugin_args
    state = trainer.accelerator.state
    if plugin_args is None or trainer.is_fsdp_enabled or state.distributed_type != DistributedType.MULTI_CPU:
        return
    state.distributed_type = DistributedType.FSDP
    PartialState().distributed_type = DistributedType.FSDP  # as accelerate's GPU branch: both shared states
    state.fsdp_plugin = FullyShardedDataParallelPlugin(**plugin_args)
    trainer.is_fsdp_enabled = True


def full_adapter_state(model) -> dict:
    """The adapter's tensors (and any other weights peft saves) gathered whole, keyed as in model.state_dict().

    Every process must call it (each `full_tensor` is a collective, taken in the same order everywhere).
    """
    from peft import get_peft_model_state_dict
    from torch.distributed.tensor import DTensor

    local = model.state_dict()
    if not hasattr(model, "peft_config"):  # full fine-tuning: the whole model is what is saved
        names = list(local)
    else:
        # peft picks the entries it saves; asked with the local shards as plain tensors it returns those very
        # objects (peft >= 0.22 would gather DTensors itself and hand back new ones, unmatched by identity)
        shards = {name: v.to_local() if isinstance(v, DTensor) else v for name, v in local.items()}
        kept = {id(v) for v in get_peft_model_state_dict(model, state_dict=shards).values()}
        names = [name for name, v in shards.items() if id(v) in kept]
    return {
        name: (local[name].full_tensor() if isinstance(local[name], DTensor) else local[name]).detach().cpu()
        for name in names
    }
