"""What every process of a multi-process run does: join the group, agree on who writes, prepare data once.

Starting the processes is launch.py's job (or torchrun's, accelerate's, the deepspeed launcher's: they all
set RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT). This module runs inside each of them:

- `setup` joins the process group before anything else needs it (DeepSpeed's, so ZeRO-3 can shard weights
  while they load), on the right GPU, and without DeepSpeed's CPU shared-memory op (a 75-95 s compile);
- `main_process_first` lets one process per node tokenize and cache the data while the others wait, then
  read that cache;
- `sharded_loading` makes `from_pretrained` build a ZeRO-3 model already partitioned;
- `finish` leaves the group cleanly (barrier, then destroy: a process that exits while its peers still talk
  can abort the run at the very end).
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager, nullcontext
from datetime import timedelta

from finetune.config import Config
from finetune.config.deepspeed import deepspeed_config, zero_stage
from finetune.errors import UserError
from finetune.launch import free_port
from finetune.model import precision

# How long a process waits for the others (a collective, or rank 0 preparing the data) unless the config's
# ddp_timeout says otherwise: HF's ddp_timeout default.
DEFAULT_TIMEOUT_S = 1800
SHM_OP = "deepspeed_shm_comm"
_joined = False  # whether `setup` started the process group (then `finish` ends it)


# Ranks from the launcher's environment (torchrun sets RANK, LOCAL_RANK, WORLD_SIZE), not accelerate's
# PartialState: that one initializes the process group when first asked, and these are asked before it exists.
def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    """Global rank 0: the one process that writes outputs, logs to W&B and prints the summary."""
    return rank() == 0


def launched() -> bool:
    """Started by a launcher (torchrun, accelerate launch, deepspeed), or set up as a one-process group."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


# ---------------------------------------------------------------- the DeepSpeed config


# Keys DeepSpeed needs that the Trainer fills from the config when they say "auto"; absent ones are added
# as "auto", so a config that only picks a ZeRO stage trains with the run's batch size and precision.
TRAINER_FILLED = (
    "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size", "gradient_clipping",
    "bf16.enabled", "fp16.enabled",
)  # fmt: skip


def for_trainer(value: str | dict | None) -> dict | None:
    """The DeepSpeed config handed to TrainingArguments: the user's, with TRAINER_FILLED keys "auto" where absent."""
    ds = deepspeed_config(value)
    if ds is None:
        return None
    ds = json.loads(json.dumps(ds))  # a copy: the config object stays as loaded
    for path in TRAINER_FILLED:
        section, _, key = path.rpartition(".")
        holder = ds.setdefault(section, {}) if section else ds
        if isinstance(holder, dict):
            holder.setdefault(key, "auto")
    return ds


def check_deepspeed(cfg: Config, prec) -> None:
    """Fixed (not "auto") DeepSpeed values must agree with the run's, or the Trainer refuses them after the
    model has loaded; say so at once, one line per value, naming the key to change."""
    ds = deepspeed_config(cfg.deepspeed)
    if ds is None:
        return
    name = cfg.deepspeed if isinstance(cfg.deepspeed, str) else "(inline)"
    micro, accum = cfg.micro_batch_size, cfg.gradient_accumulation_steps
    ours = {
        "bf16.enabled": (
            prec.bf16,
            f"bf16: {cfg.bf16}" + (", on where a GPU supports it" if cfg.bf16 == "auto" else ""),
        ),
        "fp16.enabled": (prec.fp16, f"fp16: {cfg.fp16}"),
        "train_micro_batch_size_per_gpu": (micro, "micro_batch_size"),
        "gradient_accumulation_steps": (accum, "gradient_accumulation_steps"),
        "train_batch_size": (
            micro * accum * world_size(),
            "micro_batch_size x gradient_accumulation_steps x processes",
        ),
        "gradient_clipping": (cfg.max_grad_norm, "max_grad_norm"),
    }
    problems = []
    for path, (value, source) in ours.items():
        section, _, key = path.rpartition(".")
        holder = ds.get(section) if section else ds
        have = holder.get(key, "auto") if isinstance(holder, dict) else "auto"
        if have != "auto" and have != value:
            problems.append(
                f"deepspeed: {name}: {path} is {json.dumps(have)}, but this run's value is {json.dumps(value)} "
                f'({source}); set it to "auto" to follow the config'
            )
    if problems:
        raise UserError(problems)


# ---------------------------------------------------------------- joining the group


def cpu_only() -> bool:
    import torch

    return not torch.cuda.is_available()


def setup(cfg: Config, notes: list[str]) -> bool:
    """Join the process group when there is one (or DeepSpeed needs one); returns whether this process writes.

    Without a launcher, DeepSpeed in a plain `python` process looks for mpi4py (FACTS.md): it gets the
    environment torchrun would give a one-process group instead.
    """
    check_deepspeed(cfg, precision(cfg))
    if cfg.deepspeed and not launched():
        os.environ.update(
            RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()),
        )  # fmt: skip
        notes.append(
            "deepspeed: not started by a launcher, so running as a one-process group (RANK=0, WORLD_SIZE=1)"
        )
    if not launched() or (world_size() == 1 and not cfg.deepspeed):
        return is_main()
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())  # 4-bit weights load onto the current device: this rank's GPU
    if torch.distributed.is_initialized():
        return is_main()  # the caller's own group (e.g. a script that set one up before calling train.run)
    global _joined
    _joined = True
    timeout = timedelta(seconds=cfg.ddp_timeout or DEFAULT_TIMEOUT_S)
    if cfg.deepspeed:
        import deepspeed

        if cpu_only():
            skip_shm_op()
        deepspeed.init_distributed(auto_mpi_discovery=False, timeout=timeout, verbose=False)
    else:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend=backend, timeout=timeout)
    return is_main()


def skip_shm_op() -> None:
    """Keep DeepSpeed from compiling its CPU shared-memory all-reduce op (deepspeed/comm/torch.py).

    DeepSpeed's torch backend builds `deepspeed_shm_comm` whenever the accelerator is the CPU: 75-95 s of
    C++ compilation on a fresh machine (then cached under ~/.cache/torch_extensions). The op only speeds up
    `inference_all_reduce` (tensor-parallel inference); training's collectives go through torch.distributed
    either way. Marking it incompatible in DeepSpeed's op table, which `build_shm_op` consults, skips it.
    """
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__[SHM_OP] = False


@contextmanager
def main_process_first():
    """One process per node (local rank 0) runs the block first, e.g. writes the data cache; the others run
    it after, reading that cache (a node that cannot see it rebuilds the same data in memory: data.prepare)."""
    import torch

    group = launched() and torch.distributed.is_available() and torch.distributed.is_initialized()
    if not group:
        yield
        return
    if local_rank() != 0:
        torch.distributed.barrier()
    yield
    if local_rank() == 0:
        torch.distributed.barrier()


def barrier() -> None:
    """Wait until every process of the group gets here (at once without a group)."""
    import torch

    if launched() and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def sharded_loading(cfg: Config, prec):
    """Under ZeRO-3, a context in which `from_pretrained` builds the model partitioned (deepspeed.zero.Init).

    transformers uses zero.Init while an HfDeepSpeedConfig object is alive; the Trainer's own one exists only
    once TrainingArguments do, after loading. So one is kept alive here, with the values zero.Init checks
    filled as the Trainer fills its "auto" entries. 4-bit bases skip zero.Init (transformers): each process
    loads its 4-bit copy and DeepSpeed shards it when training starts.
    """
    filled = for_trainer(cfg.deepspeed)
    if zero_stage(filled) != 3:
        return nullcontext()
    micro, accum = cfg.micro_batch_size, cfg.gradient_accumulation_steps
    autos = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accum,
        "train_batch_size": micro * accum * world_size(),
    }
    for key, value in autos.items():
        if filled[key] == "auto":
            filled[key] = value
    for key, on in (("bf16", prec.bf16), ("fp16", prec.fp16)):
        if filled[key].get("enabled") == "auto":
            filled[key]["enabled"] = on
    return _alive(filled)


@contextmanager
def _alive(ds: dict):
    from transformers.integrations import HfDeepSpeedConfig

    keep = HfDeepSpeedConfig(ds)  # transformers holds only a weak reference: this one is the strong one
    try:
        yield keep
    finally:
        del keep


def finish() -> None:
    """Wait for every process, then leave the group `setup` joined (a group set up by the caller stays)."""
    global _joined
    import torch

    if not (_joined and torch.distributed.is_initialized()):
        return
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    _joined = False


# ---------------------------------------------------------------- what the card reports


def facts(trainer) -> dict:
    """The real distributed type (accelerate's), ZeRO stage, number of processes and global batch size."""
    args = trainer.args
    out = {
        "world_size": args.world_size,
        "distributed_type": str(trainer.accelerator.distributed_type.value).lower(),
        "total_train_batch_size": args.per_device_train_batch_size
        * args.gradient_accumulation_steps
        * args.world_size,
    }
    stage = zero_stage(args.deepspeed)
    if stage is not None:
        out["zero_stage"] = stage
    if trainer.is_fsdp_enabled:
        out["fsdp_version"] = trainer.accelerator.state.fsdp_plugin.fsdp_version
        out["fsdp_checkpoints"] = str(trainer.accelerator.state.fsdp_plugin.state_dict_type.name).lower()
    return out
