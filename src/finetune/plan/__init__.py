"""Plan a run before renting a GPU: predicted peak memory by part, speed and the run's length, from the config
and the base's config.json alone (no weights, no torch for the common architectures).

`finetune plan` prints it; `finetune train` checks the fit with it before loading anything and resolves
`micro_batch_size: auto`. Sits beside `outputs` in the layers: it reads `config` (and the leaves), and the
train stage and the CLI call it.
"""

from finetune.plan.devices import DEVICE_NAMES, Device, cpu_device, detect, gpu_device
from finetune.plan.estimate import Plan, estimate

__all__ = ["DEVICE_NAMES", "Device", "Plan", "cpu_device", "detect", "estimate", "gpu_device"]
