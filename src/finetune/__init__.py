"""finetune: fine-tune LLMs with LoRA and QLoRA from one axolotl-style YAML file.

Importing the package is cheap: torch, transformers and friends are imported inside the functions that
need them, so `finetune --help` and `finetune validate` start fast.
"""

__version__ = "0.1.0"
