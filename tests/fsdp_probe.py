"""Run by tests/train/test_fsdp.py under torchrun: `finetune train`'s own recipe (train.run) with one extra callback
that records, after the first optimizer step, what FSDP2 made of every parameter in this process.

    python -m torch.distributed.run --nproc-per-node 2 tests/fsdp_probe.py CONFIG OUT_PREFIX

writes OUT_PREFIX.<rank>.json: {parameter name: {"dtensor", "local_numel", "numel", "dtype", "layer"}}.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from transformers import TrainerCallback

from finetune import config, train


class Probe(TrainerCallback):
    def __init__(self, prefix: str):
        self.prefix = prefix

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step != 1:
            return
        from torch.distributed.tensor import DTensor

        layers = {name: type(module).__name__ for name, module in model.named_modules()}
        seen = {}
        for name, param in model.named_parameters():
            local = param.to_local() if isinstance(param, DTensor) else param
            seen[name] = {
                "dtensor": isinstance(param, DTensor),
                "local_numel": local.numel(),
                "numel": param.numel(),
                "dtype": str(local.dtype),
                "layer": layers.get(name.rsplit(".", 1)[0], ""),
            }
        Path(f"{self.prefix}.{os.environ.get('RANK', '0')}.json").write_text(json.dumps(seen))


if __name__ == "__main__":
    train.run(config.load(sys.argv[1]), callbacks=[Probe(sys.argv[2])])
