"""The model card: hub-valid front matter, the run's facts, HF's training table, and the same card both ways."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from finetune import card, card_training, config

SECRET = "hf_abcdefghijklmnopqrstuvwxyz0123456789"
LOG_HISTORY = [
    {"loss": 6.95, "grad_norm": 1.2, "learning_rate": 0.0015, "epoch": 0.3333333333333333, "step": 1},
    {"loss": 6.81, "grad_norm": 1.1, "learning_rate": 0.003, "epoch": 0.6666666666666666, "step": 2},
    {"loss": 6.52, "grad_norm": 0.9, "learning_rate": 0.0025, "epoch": 1.0, "step": 3},
    {"eval_loss": 6.61234567, "eval_runtime": 0.5, "eval_samples_per_second": 10.0, "eval_steps_per_second": 2.0,
     "eval_accuracy": 0.25, "epoch": 1.0, "step": 3},
    {"loss": 6.1, "grad_norm": 0.8, "learning_rate": 0.001, "epoch": 1.3333333333333333, "step": 4},
    {"loss": 5.9, "grad_norm": 0.7, "learning_rate": 0.0005, "epoch": 1.6666666666666665, "step": 5},
    {"eval_loss": 6.2, "eval_runtime": 0.5, "eval_samples_per_second": 10.0, "eval_steps_per_second": 2.0,
     "eval_accuracy": 0.5, "epoch": 1.6666666666666665, "step": 5},
    {"train_runtime": 3.2, "train_samples_per_second": 9.4, "train_steps_per_second": 1.6, "total_flos": 10.0,
     "train_loss": 6.456, "epoch": 1.6666666666666665, "step": 5},
]  # fmt: skip


def make_run(root: Path, base_model: str, adapter_dir: Path | None = None, **overrides) -> Path:
    """An output_dir as train.py leaves it (the contract), built from a real adapter and hand-written logs."""
    out = root / "run"
    if adapter_dir is not None:
        shutil.copytree(adapter_dir, out)
    out.mkdir(exist_ok=True)
    data = root / "train.jsonl"
    data.write_text('{"context": "q", "target": "a"}\n')
    raw = {
        "base_model": base_model,
        "adapter": "qlora",
        "load_in_4bit": True,
        "lora_r": 4,
        "lora_alpha": 8,
        "lora_target_modules": ["q_proj", "v_proj"],
        "license": "apache-2.0",
        "datasets": [
            {"path": str(data), "type": {"field_instruction": "context", "field_output": "target",
                                         "format": "[INST] {instruction} [/INST]"}},
            {"path": "AdaptLLM/finance-tasks"},
        ],
        "val_set_size": 0.1,
        "output_dir": str(out),
        "wandb_name": "fin-qlora",
        "micro_batch_size": 2,
        "gradient_accumulation_steps": 4,
        "num_epochs": 2,
        "warmup_steps": 2,
        "deepspeed": {"zero_optimization": {"stage": 1}, "hf_token": "plain-secret-value", "note": SECRET},
        **overrides,
    }  # fmt: skip
    cfg = config.validate(raw)
    versions = {"finetune": "0.1.0", "transformers": "5.23.0", "peft": "0.21.2", "torch": "2.13.0",
                "datasets": "5.2.0", "tokenizers": "0.22.1", "deepspeed": "0.19.8"}  # fmt: skip
    (out / "config.yml").write_text(config.to_yaml(cfg, versions))
    state = {"log_history": LOG_HISTORY, "global_step": 5, "num_train_epochs": 2, "max_steps": 6,
             "train_batch_size": 2}  # fmt: skip
    (out / "trainer_state.json").write_text(json.dumps(state))
    results = {"train_runtime": 3.2, "train_samples_per_second": 9.4, "train_tokens_per_second": 812.5,
               "train_loss": 6.456, "eval_loss": 6.2, "eval_accuracy": 0.5, "eval_runtime": 0.5,
               "peak_memory_gb": 0.4, "world_size": 2, "distributed_type": "DEEPSPEED",
               "total_train_batch_size": 16, "mixed_precision": "bf16"}  # fmt: skip
    (out / "all_results.json").write_text(json.dumps(results))
    return out


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """A real PEFT adapter (LoRA r=4 on q/v) + tokenizer on the tiny model."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("adapter")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    peft_model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


@pytest.fixture()
def run_dir(tmp_path, adapter_dir) -> Path:
    return make_run(tmp_path, "meta-llama/Llama-3.1-8B-Instruct", adapter_dir)


def _table(text: str, heading: str) -> list[dict]:
    block = text.split(heading, 1)[1].strip().split("\n\n", 1)[0].splitlines()
    head = [c.strip() for c in block[0].strip("|").split("|")]
    return [
        dict(zip(head, (c.strip() for c in line.strip("|").split("|")), strict=True)) for line in block[2:]
    ]


def test_card_parses_with_hub_metadata(run_dir):
    from huggingface_hub import ModelCard

    path = card.write_card(run_dir)
    loaded = ModelCard.load(path)
    data = loaded.data.to_dict()
    assert data["base_model"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert data["library_name"] == "peft"
    assert data["pipeline_tag"] == "text-generation"
    assert data["license"] == "apache-2.0"
    assert data["tags"] == ["finetune", "qlora", "sft", "base_model:adapter:meta-llama/Llama-3.1-8B-Instruct"]
    assert data["datasets"] == ["AdaptLLM/finance-tasks"]  # the local file is not a hub dataset
    results = {r.metric_type: r.metric_value for r in loaded.data.eval_results}
    assert results == {"loss": 6.2, "accuracy": 0.5}
    assert loaded.data.model_name == "fin-qlora"
    assert "More information needed" not in loaded.text and "More Information Needed" not in loaded.text


def test_card_body_facts(run_dir):
    text = Path(card.write_card(run_dir)).read_text()
    assert "# fin-qlora\n" in text
    assert (
        "[meta-llama/Llama-3.1-8B-Instruct](https://huggingface.co/meta-llama/Llama-3.1-8B-Instruct)" in text
    )
    assert "Final evaluation loss: **6.2**" in text
    hp = dict(re.findall(r"^- (\w+): (.*)$", text.split("### Training hyperparameters")[1], re.M))
    assert hp["learning_rate"] == "0.0002"
    assert hp["train_batch_size"] == "2" and hp["eval_batch_size"] == "2"
    assert hp["distributed_type"] == "DEEPSPEED" and hp["num_devices"] == "2"
    assert hp["gradient_accumulation_steps"] == "4" and hp["total_train_batch_size"] == "16"
    assert hp["optimizer"].startswith("adamw_torch with betas=(0.9,0.999)")
    assert hp["lr_scheduler_type"] == "cosine" and hp["lr_scheduler_warmup_steps"] == "2"
    assert hp["num_epochs"] == "2.0" and hp["mixed_precision_training"] == "bf16"
    assert (hp["lora_r"], hp["lora_alpha"], hp["lora_target_modules"]) == ("4", "8", "q_proj, v_proj")
    assert hp["quantization"].startswith("bitsandbytes 4-bit")
    assert "- PEFT 0.21.2" in text and "- DeepSpeed 0.19.8" in text and "- PyTorch 2.13.0" in text
    assert "| tokens/s | 812.5 |" in text and "| peak_memory_gb | 0.4 |" in text
    assert "world_size" not in text.split("## Results")[1].split("## Usage")[0]  # facts feed hyperparameters
    assert "<details>" in text and "lora_target_modules:" in text
    # usage: PeftModel on the base, prompted in the training format
    usage = text.split("```python", 1)[1].split("```", 1)[0]
    assert "PeftModel.from_pretrained(model, adapter)" in usage
    assert "prompt = '[INST] What does EBITDA stand for? [/INST]'" in usage
    compile(usage, "usage", "exec")


def test_eta_min_is_reported_with_the_scheduler(tmp_path, adapter_dir):
    run = make_run(tmp_path, "meta-llama/Llama-3.1-8B-Instruct", adapter_dir, eta_min=1e-5)
    text = Path(card.write_card(run)).read_text()
    hp = dict(re.findall(r"^- (\w+): (.*)$", text.split("### Training hyperparameters")[1], re.M))
    assert hp["lr_scheduler_type"] == "cosine" and hp["lr_scheduler_min_lr"] == "1e-05"


def test_training_table_rows_equal_the_logs(run_dir):
    text = Path(card.write_card(run_dir)).read_text()
    rows = _table(text, "### Training results")
    assert rows == [
        {
            "Training Loss": "6.52",
            "Epoch": "1.0",
            "Step": "3",
            "Validation Loss": "6.6123",
            "Accuracy": "0.25",
        },
        {"Training Loss": "5.9", "Epoch": "1.6667", "Step": "5", "Validation Loss": "6.2", "Accuracy": "0.5"},
    ]


def test_rows_join_train_and_eval_per_step():
    logs = [{"eval_loss": 2.0, "epoch": 0.1, "step": 1}, {"loss": 3.0, "epoch": 0.2, "step": 2},
            {"eval_loss": 1.5, "epoch": 0.2, "step": 2}, {"loss": 2.5, "epoch": 0.3, "step": 3}]  # fmt: skip
    rows = card_training.training_rows(logs)
    assert [(r["Training Loss"], r["Step"], r["Validation Loss"]) for r in rows] == [
        ("No log", 1, 2.0),
        (3.0, 2, 1.5),
    ]
    no_eval = card_training.training_rows([e for e in logs if "loss" in e])
    assert no_eval == [
        {"Training Loss": 3.0, "Epoch": 0.2, "Step": 2},
        {"Training Loss": 2.5, "Epoch": 0.3, "Step": 3},
    ]


def test_no_secret_in_card(run_dir):
    text = Path(card.write_card(run_dir)).read_text()
    assert SECRET not in text and "plain-secret-value" not in text
    assert "hf_token: '***'" in text


def test_local_base_has_no_hub_link(tmp_path, tiny_model_dir, adapter_dir):
    from huggingface_hub import ModelCard

    out = make_run(tmp_path, str(tiny_model_dir), adapter_dir, license=None)
    loaded = ModelCard.load(card.write_card(out))
    assert "huggingface.co/" + str(tiny_model_dir).lstrip("/") not in loaded.text
    assert "huggingface.co//" not in loaded.text
    assert f"`{tiny_model_dir}` (a local model folder)" in loaded.text
    data = loaded.data.to_dict()
    assert "base_model" not in data and "license" not in data
    assert not any(t.startswith("base_model:") for t in data["tags"])


def test_recorded_local_base_wins_over_its_looks(tmp_path, adapter_dir, monkeypatch):
    """`models/tiny` looks like a hub id from another folder; training records that it was local."""
    monkeypatch.chdir(tmp_path)  # a folder without models/tiny
    out = make_run(tmp_path, "models/tiny", adapter_dir)
    assert (
        "https://huggingface.co/models/tiny" in Path(card.write_card(out)).read_text()
    )  # no record: a hub id
    results = json.loads((out / "all_results.json").read_text())
    (out / "all_results.json").write_text(json.dumps({**results, "base_model_local": True}))
    text = Path(card.write_card(out)).read_text()
    front = yaml.safe_load(text.split("---")[1])
    assert "huggingface.co/models" not in text and "base_model" not in front
    assert not any(t.startswith("base_model:") for t in front["tags"])
    assert "`models/tiny` (a local model folder)" in text


def test_all_linear_targets_are_named_once(tmp_path, adapter_dir):
    out = make_run(tmp_path, "meta-llama/Llama-3.1-8B-Instruct", adapter_dir, lora_target_linear=True)
    adapter = json.loads((out / "adapter_config.json").read_text())
    paths = [f"model.layers.{i}.{m}" for i in range(2) for m in ("self_attn.q_proj", "mlp.down_proj")]
    (out / "adapter_config.json").write_text(json.dumps({**adapter, "target_modules": paths}))
    assert "- lora_target_modules: all-linear (down_proj, q_proj)\n" in Path(card.write_card(out)).read_text()


def test_interrupted_run_uses_newest_checkpoint(tmp_path, adapter_dir):
    out = make_run(tmp_path, "meta-llama/Llama-3.1-8B-Instruct")
    for step in (2, 10):
        shutil.copytree(adapter_dir, out / f"checkpoint-{step}")
    state = json.loads((out / "trainer_state.json").read_text())
    (out / "checkpoint-10" / "trainer_state.json").write_text(
        json.dumps({**state, "log_history": LOG_HISTORY[:4]})
    )
    (out / "trainer_state.json").unlink()
    (out / "all_results.json").unlink()
    (Path(out) / "config.yml").write_text((out / "config.yml").read_text())
    text = Path(card.write_card(out)).read_text()
    assert len(_table(text, "### Training results")) == 1
    assert f'adapter = "{out}/checkpoint-10"' in text
    assert "Final evaluation loss: **6.6123**" in text


def test_config_with_missing_paths_still_loads(run_dir, tmp_path):
    (tmp_path / "train.jsonl").unlink()  # the run was copied to another machine: its data is not here
    text = Path(card.write_card(run_dir)).read_text()
    assert "# fin-qlora" in text


def test_not_an_output_dir(tmp_path):
    from finetune.errors import UserError

    with pytest.raises(UserError, match="no config.yml"):
        card.write_card(tmp_path)


def test_chat_template_usage(tmp_path, adapter_dir):
    data = tmp_path / "chat.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    out = make_run(tmp_path, "meta-llama/Llama-3.1-8B-Instruct", adapter_dir,
                   datasets=[{"path": str(data), "type": "chat_template"}])  # fmt: skip
    text = Path(card.write_card(out)).read_text()
    assert "tokenizer.apply_chat_template(" in text
    assert "datasets" not in yaml.safe_load(text.split("---")[1])  # no hub dataset: the key is left out


@pytest.mark.slow
def test_quickstart_run_card_end_to_end(tmp_path, monkeypatch):
    """Train the quickstart for real; its card matches its logs, `finetune card` rewrites it byte for byte,
    and a --dequantize merge of the QLoRA adapter equals the 4-bit base + adapter it was trained as."""
    import subprocess
    import sys

    from huggingface_hub import ModelCard

    from finetune import merge, train
    from finetune.tiny import write_tiny_model

    root = Path(__file__).resolve().parent.parent
    monkeypatch.chdir(tmp_path)
    write_tiny_model(tmp_path / "models" / "tiny")
    (tmp_path / "examples").mkdir()
    shutil.copy(root / "examples" / "finance_qa.jsonl", tmp_path / "examples")
    cfg = config.load(root / "examples" / "quickstart.yaml", ["num_epochs=2"])
    out = train.run(cfg)

    first = (out / "README.md").read_text()
    loaded = ModelCard.load(out / "README.md")
    state = json.loads((out / "trainer_state.json").read_text())
    evals = [e for e in state["log_history"] if "eval_loss" in e]
    assert [(r.metric_type, r.metric_value) for r in loaded.data.eval_results] == [
        ("loss", evals[-1]["eval_loss"]),
        ("token_accuracy", evals[-1]["eval_token_accuracy"]),
    ]
    assert "base_model" not in loaded.data.to_dict() and "huggingface.co/models" not in first
    rows = _table(first, "### Training results")
    assert [(r["Step"], r["Validation Loss"]) for r in rows] == [
        (str(e["step"]), card_training.fmt(e["eval_loss"])) for e in evals
    ]
    train_losses = {e["step"]: e["loss"] for e in state["log_history"] if "loss" in e}
    assert [r["Training Loss"] for r in rows] == [card_training.fmt(train_losses[e["step"]]) for e in evals]
    assert "![Training and validation loss](loss.png)" in first and (out / "loss.png").is_file()
    assert "prompt = '[INST] What does EBITDA stand for? [/INST]'" in first

    (out / "README.md").unlink()
    done = subprocess.run(
        [sys.executable, "-m", "finetune.cli", "card", str(out)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert (out / "README.md").read_text() == first

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune import model as model_module

    merge.merge_command(out, tmp_path / "merged", dtype="fp32", dequantize=True)
    prec = model_module.Precision(bf16=False, fp16=False, tf32=None, dtype="float32")
    base = AutoModelForCausalLM.from_pretrained(
        cfg.base_model, dtype=torch.float32, quantization_config=model_module.quantization_config(cfg, prec)
    )
    trained = PeftModel.from_pretrained(base, out)
    model_module.disable_cpu_bf16_repack(trained)
    prompts = merge.prompt_ids(AutoTokenizer.from_pretrained(out))
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert merge.max_difference(merge.logits(merged, prompts), merge.logits(trained, prompts)) < 1e-4
