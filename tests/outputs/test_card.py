"""The model card: hub-valid front matter, the run's facts, HF's training table, and the same card both ways.

The card is built from the files a run leaves, so the tests read the files of a real run: the tiny model is
trained once for the module (seconds). Tests that change a run work on a copy.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import send_signal
from finetune import config
from finetune.outputs import card
from finetune.outputs.card import training as card_training
from finetune.outputs.card.training import fmt

SECRET = "hf_abcdefghijklmnopqrstuvwxyz0123456789"
HUB_BASE = "meta-llama/Llama-3.1-8B-Instruct"
INST = {"field_instruction": "context", "field_output": "target", "format": "[INST] {instruction} [/INST]"}


def run_config(root: Path, **over) -> dict:
    """QLoRA r=4 on q/v of the tiny model at `models/tiny` (a relative path, as in the quickstart): 9 training
    rows in steps of 2 x 2 rows, 2 epochs = 6 optimizer steps, evaluated and saved every 2. The data cache's
    folder name holds a token, as a path pasted from somewhere might."""
    data = root / "train.jsonl"
    data.write_text("".join(json.dumps({"context": f"What is {i} + {i}?", "target": str(2 * i)}) + "\n"
                            for i in range(12)))  # fmt: skip
    return {
        "base_model": "models/tiny", "adapter": "qlora", "load_in_4bit": True, "lora_r": 4, "lora_alpha": 8,
        "lora_target_modules": ["q_proj", "v_proj"], "license": "apache-2.0",
        "datasets": [{"path": str(data), "type": INST}], "val_set_size": 0.25, "sequence_len": 128,
        "dataset_prepared_path": str(root / f"prepared-{SECRET}"), "dataset_processes": 1,
        "output_dir": str(root / "out"), "wandb_name": "fin-qlora", "micro_batch_size": 2,
        "gradient_accumulation_steps": 2, "num_epochs": 2, "warmup_steps": 2, "eta_min": 1e-5,
        "eval_steps": 2, "save_steps": 2, "logging_steps": 1, "seed": 7, **over,
    }  # fmt: skip


def train_in(root: Path, tiny_model_dir: Path, callbacks=(), **over) -> Path:
    """Train run_config in `root` (the working folder, where models/tiny is), on one thread."""
    import torch

    from finetune import train

    (root / "models").mkdir(exist_ok=True)
    if not (root / "models" / "tiny").exists():
        (root / "models" / "tiny").symlink_to(tiny_model_dir)
    cwd, threads = os.getcwd(), torch.get_num_threads()
    os.chdir(root)
    torch.set_num_threads(1)
    try:
        return train.run(config.validate(run_config(root, **over)), callbacks=callbacks)
    finally:
        os.chdir(cwd)
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory) -> Path:
    """The finished run's output_dir. Read-only: use `run_dir` to change anything."""
    return train_in(tmp_path_factory.mktemp("trained"), tiny_model_dir)


@pytest.fixture()
def run_dir(trained, tmp_path) -> Path:
    """A copy of the finished run (config.yml still names the original output_dir, as after a move)."""
    return Path(shutil.copytree(trained, tmp_path / "run", symlinks=True))


def read(run: Path, name: str) -> dict:
    return json.loads((run / name).read_text())


def with_config(run: Path, **changes) -> Path:
    """config.yml as training writes it for the run's config with `changes` (validated, then saved the same way)."""
    raw = yaml.safe_load((run / "config.yml").read_text())
    versions = raw.pop("finetune_versions")
    (run / "config.yml").write_text(config.to_yaml(config.validate({**raw, **changes}), versions))
    return run


def set_fact(run: Path, key: str, value=None) -> None:
    """Change (None: remove) a run fact where training writes it: all_results.json and train_results.json."""
    for name in ("all_results.json", "train_results.json"):
        results = read(run, name)
        results.pop(key)
        (run / name).write_text(json.dumps(results if value is None else {**results, key: value}))


def on_hub_base(run: Path) -> Path:
    """The run as if its base had been the hub's Llama 3.1 (training records base_model_local: false then),
    with a hub dataset beside the local file."""
    datasets = yaml.safe_load((run / "config.yml").read_text())["datasets"]
    with_config(run, base_model=HUB_BASE, datasets=[*datasets, {"path": "AdaptLLM/finance-tasks"}])
    set_fact(run, "base_model_local", False)
    return run


def hyperparameters(text: str) -> dict:
    return dict(re.findall(r"^- (\w+): (.*)$", text.split("### Training hyperparameters")[1], re.M))


def _table(text: str, heading: str) -> list[dict]:
    block = text.split(heading, 1)[1].strip().split("\n\n", 1)[0].splitlines()
    head = [c.strip() for c in block[0].strip("|").split("|")]
    return [
        dict(zip(head, (c.strip() for c in line.strip("|").split("|")), strict=True)) for line in block[2:]
    ]


def test_training_records_what_the_card_reads(trained):
    """The run facts the card (and merge) read are the ones training writes, under the same names."""
    results = read(trained, "all_results.json")
    assert results["base_model_local"] is True  # models/tiny: a relative path that looks like a hub id
    assert results["device"] == "cpu" or results["device"].startswith("cuda")
    assert results["world_size"] == 1 and results["total_train_batch_size"] == 4
    assert results["mixed_precision"] in ("no", "bf16", "fp16")
    assert read(trained, "trainer_state.json")["train_batch_size"] == 2
    assert {"eval_loss", "eval_token_accuracy"} <= read(trained, "eval_results.json").keys()
    assert [p.name for p in sorted(trained.glob("checkpoint-*"))] == [
        "checkpoint-2",
        "checkpoint-4",
        "checkpoint-6",
    ]


def test_card_parses_with_hub_metadata(run_dir):
    from huggingface_hub import ModelCard

    results = read(on_hub_base(run_dir), "eval_results.json")
    loaded = ModelCard.load(card.write_card(run_dir))
    data = loaded.data.to_dict()
    assert data["base_model"] == HUB_BASE
    assert data["library_name"] == "peft"
    assert data["pipeline_tag"] == "text-generation"
    assert data["license"] == "apache-2.0"
    assert data["tags"] == ["finetune", "qlora", "sft", f"base_model:adapter:{HUB_BASE}"]
    assert data["datasets"] == ["AdaptLLM/finance-tasks"]  # the local file is not a hub dataset
    scores = {r.metric_type: r.metric_value for r in loaded.data.eval_results}
    assert scores == {"loss": results["eval_loss"], "token_accuracy": results["eval_token_accuracy"]}
    assert loaded.data.model_name == "fin-qlora"
    assert "More information needed" not in loaded.text and "More Information Needed" not in loaded.text
    assert f"[{HUB_BASE}](https://huggingface.co/{HUB_BASE})" in loaded.text


def test_card_body_facts(trained):
    text = (trained / "README.md").read_text()  # written by training
    results, versions = (
        read(trained, "all_results.json"),
        config.load(trained / "config.yml").finetune_versions,
    )
    assert "# fin-qlora\n" in text
    assert "for 2 epochs (6 optimizer steps)" in text
    assert f"Final evaluation loss: **{fmt(results['eval_loss'])}**" in text
    hp = hyperparameters(text)
    assert hp["learning_rate"] == "0.0002"
    assert hp["train_batch_size"] == "2" and hp["eval_batch_size"] == "2"
    assert "distributed_type" not in hp and "num_devices" not in hp  # one process
    assert hp["gradient_accumulation_steps"] == "2" and hp["total_train_batch_size"] == "4"
    assert hp["optimizer"].startswith("adamw_torch with betas=(0.9,0.999)")
    assert hp["lr_scheduler_type"] == "cosine" and hp["lr_scheduler_warmup_steps"] == "2"
    assert hp["lr_scheduler_min_lr"] == "1e-05"
    assert hp["num_epochs"] == "2.0" and hp["max_sequence_length"] == "128"
    assert hp.get("mixed_precision_training") == (None if results["mixed_precision"] == "no" else "bf16")
    assert (hp["lora_r"], hp["lora_alpha"], hp["lora_target_modules"]) == ("4", "8.0", "q_proj, v_proj")
    assert hp["quantization"].startswith("bitsandbytes 4-bit")
    assert f"- PEFT {versions['peft']}" in text and f"- PyTorch {versions['torch']}" in text
    assert "DeepSpeed" not in text  # not used
    summary = text.split("## Results")[1].split("## Usage")[0]
    assert f"| tokens/s | {fmt(results['train_tokens_per_second'])} |" in summary
    assert f"| peak CPU memory (MiB) | {fmt(results['peak_cpu_memory_mb'])} |" in summary
    assert "| optimizer steps | 6 |" in summary
    assert f"- token_accuracy: {fmt(results['eval_token_accuracy'])}" in summary
    assert "world_size" not in summary  # facts feed the hyperparameters
    assert "<details>" in text and "lora_target_modules:" in text
    assert "![Training and validation loss](loss.png)" in text
    # usage: PeftModel on the base, prompted in the training format
    usage = text.split("```python", 1)[1].split("```", 1)[0]
    assert "PeftModel.from_pretrained(model, adapter)" in usage
    assert "prompt = '[INST] What does EBITDA stand for? [/INST]'" in usage
    compile(usage, "usage", "exec")


def test_card_is_the_same_rebuilt(run_dir, trained):
    (run_dir / "README.md").unlink()
    assert Path(card.write_card(run_dir)).read_text() == (trained / "README.md").read_text()


def test_training_table_rows_equal_the_logs(trained):
    history = read(trained, "trainer_state.json")["log_history"]
    losses = {e["step"]: e["loss"] for e in history if "loss" in e}
    evals = [e for e in history if "eval_loss" in e]
    rows = _table((trained / "README.md").read_text(), "### Training results")
    assert [e["step"] for e in evals] == [2, 4, 6]
    assert rows == [
        {
            "Training Loss": fmt(losses[e["step"]]), "Epoch": fmt(e["epoch"]), "Step": str(e["step"]),
            "Validation Loss": fmt(e["eval_loss"]), "Token Accuracy": fmt(e["eval_token_accuracy"]),
        }
        for e in evals
    ]  # fmt: skip


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


def test_no_secret_in_card(trained):
    assert SECRET in (trained / "config.yml").read_text()  # under an innocent key, so config.yml keeps it
    text = (trained / "README.md").read_text()
    assert SECRET not in text and "prepared-***" in text


def test_local_base_has_no_hub_link(run_dir, tiny_model_dir):
    from huggingface_hub import ModelCard

    with_config(run_dir, base_model=str(tiny_model_dir))
    loaded = ModelCard.load(card.write_card(run_dir))
    assert "huggingface.co/" + str(tiny_model_dir).lstrip("/") not in loaded.text
    assert "huggingface.co//" not in loaded.text
    assert f"`{tiny_model_dir}` (a local model folder)" in loaded.text
    data = loaded.data.to_dict()
    assert "base_model" not in data and not any(t.startswith("base_model:") for t in data["tags"])


def test_recorded_local_base_wins_over_its_looks(run_dir, tmp_path, monkeypatch):
    """`models/tiny` looks like a hub id from another folder; training records that it was local."""
    monkeypatch.chdir(tmp_path)  # a folder without models/tiny
    text = Path(card.write_card(run_dir)).read_text()
    front = yaml.safe_load(text.split("---")[1])
    assert "huggingface.co/models" not in text and "base_model" not in front
    assert not any(t.startswith("base_model:") for t in front["tags"])
    assert "`models/tiny` (a local model folder)" in text
    set_fact(run_dir, "base_model_local")  # a run folder without the record: the looks decide
    assert "https://huggingface.co/models/tiny" in Path(card.write_card(run_dir)).read_text()


def test_interrupted_run_uses_newest_checkpoint(tmp_path, tiny_model_dir, capsys):
    """Stopped by SIGTERM early (all-linear targets): no final adapter, results or state; the card reads the
    newest checkpoint's."""
    with pytest.raises(SystemExit):
        train_in(tmp_path, tiny_model_dir, callbacks=[send_signal(2)], lora_target_modules=None,
                 lora_target_linear=True)  # fmt: skip
    capsys.readouterr()
    out = tmp_path / "out"
    newest = max(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == [
        "config.yml",
        "metrics.jsonl",
        "status.json",
    ]
    text = Path(card.write_card(out)).read_text()
    assert f'adapter = "{out}/{newest.name}"' in text
    state = read(newest, "trainer_state.json")
    evals = [e for e in state["log_history"] if "eval_loss" in e]
    assert len(_table(text, "### Training results")) == len(evals) == 1  # the evaluation at step 2
    assert f"Final evaluation loss: **{fmt(evals[-1]['eval_loss'])}**" in text
    assert f"for 2 epochs ({state['global_step']} optimizer steps)" in text
    hp = hyperparameters(text)
    assert (
        hp["lora_target_modules"]
        == "all-linear (down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj)"
    )


def test_config_with_missing_paths_still_loads(run_dir, trained):
    """The run was copied to another machine: its data and base are not there."""
    text = (run_dir / "config.yml").read_text()
    text = text.replace(str(trained.parent / "train.jsonl"), "/elsewhere/train.jsonl")
    (run_dir / "config.yml").write_text(
        text.replace("base_model: models/tiny", "base_model: /elsewhere/tiny")
    )
    text = Path(card.write_card(run_dir)).read_text()
    assert "# fin-qlora" in text and "`/elsewhere/tiny` (a local model folder)" in text


def test_not_an_output_dir(tmp_path):
    from finetune.errors import UserError

    with pytest.raises(UserError, match="no config.yml"):
        card.write_card(tmp_path)


def test_chat_template_usage(run_dir, tmp_path):
    data = tmp_path / "chat.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    text = Path(
        card.write_card(with_config(run_dir, datasets=[{"path": str(data), "type": "chat_template"}]))
    )
    text = text.read_text()
    assert "tokenizer.apply_chat_template(" in text
    assert "datasets" not in yaml.safe_load(text.split("---")[1])  # no hub dataset: the key is left out


@pytest.mark.slow
def test_quickstart_run_card_end_to_end(tmp_path, monkeypatch):
    """Train the quickstart for real; its card matches its logs, `finetune card` rewrites it byte for byte,
    and a --dequantize merge of the QLoRA adapter equals the 4-bit base + adapter it was trained as."""
    import subprocess
    import sys

    from huggingface_hub import ModelCard

    from finetune import train
    from finetune.model.tiny import write_tiny_model
    from finetune.outputs import merge

    root = Path(__file__).resolve().parents[2]
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


@pytest.mark.slow
def test_saved_config_and_card_show_the_weights(tiny_model_dir, tmp_path):
    extra = tmp_path / "extra.jsonl"  # a second source, repeated 2.5 times
    extra.write_text("".join(json.dumps({"q": f"x question {i}", "a": f"x{i}"}) + "\n" for i in range(6)))
    main = tmp_path / "train.jsonl"  # written by run_config; weighted here
    datasets = [{"path": str(main), "type": {"field_instruction": "context", "field_output": "target",
                 "format": "[INST] {instruction} [/INST]"}, "weight": 0.5},
                {"path": str(extra), "type": {"field_instruction": "q", "field_output": "a", "format": "{instruction} ="}, "weight": 2.5}]  # fmt: skip
    out = train_in(tmp_path, tiny_model_dir, datasets=datasets, num_epochs=1)
    saved = yaml.safe_load((out / "config.yml").read_text())
    assert [d["weight"] for d in saved["datasets"]] == [0.5, 2.5]
    card = (out / "README.md").read_text()
    assert f"`{main}` (weight 0.5), `{extra}` (weight 2.5)" in card
