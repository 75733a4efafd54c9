"""Shared fixtures: the tiny model is built once per test session (seconds) and reused read-only."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
FINLORA = SHARED / "data" / "finlora"
AXOLOTL_EXAMPLES = SHARED / "external" / "axolotl-examples"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

needs_shared = pytest.mark.skipif(
    not SHARED.is_dir(), reason="../shared (FinLoRA data, axolotl examples) is absent"
)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny Llama model + tokenizer in the HF layout. Treat as read-only."""
    from finetune.tiny import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture()
def write_config(tmp_path):
    """Write a YAML config (a dict or text) into tmp_path and return its path."""
    import yaml

    def _write(content, name="config.yaml") -> Path:
        path = tmp_path / name
        path.write_text(content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False))
        return path

    return _write
