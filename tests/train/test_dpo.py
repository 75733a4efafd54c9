"""DPO (rl: dpo) through `finetune train`: TRL's DPOTrainer with the peft adapter as the policy and the base
(adapter switched off) as the reference, on a 4-bit tiny base and on a pre-quantized checkpoint; resume, card,
merge. On tiny random models these check mechanics and the direction of the metrics, not quality (FACTS.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import FINLORA, needs_shared, one_thread_run, sentiment_rows
from finetune import config
from finetune.train import preference as rl

PAIR_TYPE = {"field_prompt": "context", "field_chosen": "target", "field_rejected": "wrong"}
LABELS = ("negative", "neutral", "positive")


def pairs(rows: list[dict]) -> list[dict]:
    return [{**r, "wrong": LABELS[(LABELS.index(r["target"]) + 1 + i % 2) % 3]} for i, r in enumerate(rows)]


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def dpo_cfg(base_model, root: Path, data: Path, **extra) -> config.Config:
    return config.validate({
        "base_model": str(base_model), "adapter": "lora", "lora_r": 8, "lora_alpha": 16, "lora_target_linear": True,
        "rl": "dpo", "rl_beta": 0.1, "datasets": [{"path": str(data), "type": PAIR_TYPE}], "sequence_len": 256,
        "max_prompt_len": 96, "dataset_prepared_path": str(root / "prepared"), "output_dir": str(root / "out"),
        "micro_batch_size": 4, "learning_rate": 1e-3, "lr_scheduler": "constant", "logging_steps": 1, "seed": 5,
        **extra,
    })  # fmt: skip


class Watch:
    """What the Trainer's model looks like when training starts and ends."""

    def __init__(self):
        from transformers import TrainerCallback

        outer = self
        self.adapters, self.repacking = None, None

        class _Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, model=None, **kwargs):
                outer.adapters = sorted(model.peft_config)

            def on_train_end(self, args, state, control, model=None, **kwargs):
                import bitsandbytes as bnb

                layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
                outer.repacking = [getattr(m, "support_avx512bf16_for_cpu", False) for m in layers]

        self.callback = _Callback()


@pytest.fixture(scope="module")
def dpo_run(tiny_model_dir, tmp_path_factory):
    """QLoRA DPO on FinLoRA sentiment pairs (right label chosen, a wrong one rejected): 30 steps, 2 evaluations."""
    root = tmp_path_factory.mktemp("dpo")
    rows = [
        json.loads(line) for line in (FINLORA / "fpb_test.jsonl").read_text().splitlines() if line.strip()
    ]
    train_file = write(root / "train.jsonl", pairs(rows[:192]))
    test_file = write(root / "test.jsonl", pairs(rows[-48:]))
    cfg = dpo_cfg(
        tiny_model_dir, root, train_file, adapter="qlora", load_in_4bit=True, max_steps=30, eval_steps=15,
        test_datasets=[{"path": str(test_file), "type": PAIR_TYPE}], logging_steps=5,
    )  # fmt: skip
    watch = Watch()
    return cfg, one_thread_run(cfg, callbacks=[watch.callback]), watch


def history(out: Path) -> list[dict]:
    return json.loads((out / "trainer_state.json").read_text())["log_history"]


@needs_shared
def test_dpo_raises_reward_accuracy_against_the_adapter_free_base(dpo_run):
    cfg, out, watch = dpo_run
    train = [e for e in history(out) if "rewards/accuracies" in e]
    # the first batch is scored before any update: policy == reference exactly, so every reward is 0
    assert train[0]["rewards/chosen"] == 0.0 and train[0]["rewards/rejected"] == 0.0
    assert train[-1]["rewards/accuracies"] > train[0]["rewards/accuracies"]
    assert train[-1]["rewards/margins"] > 0
    evals = [e for e in history(out) if "eval_rewards/accuracies" in e]
    assert len(evals) == 2 and evals[-1]["eval_rewards/margins"] > evals[0]["eval_rewards/margins"] > 0
    assert evals[-1]["eval_rewards/accuracies"] > 0.5
    # no second copy: TRL's frozen "ref" adapter is dropped, the reference is the base with the adapter off
    assert watch.adapters == ["default"]
    assert watch.repacking and not any(
        watch.repacking
    )  # the CPU 4-bit trap stays disarmed through evaluations
    assert not (out / "ref").exists()


@needs_shared
def test_dpo_card_parses_carries_rewards_and_cites_dpo(dpo_run):
    from huggingface_hub import ModelCard

    _, out, _ = dpo_run
    card = ModelCard.load(out / "README.md")
    assert {"dpo", "trl", "qlora"} <= set(card.data.tags) and card.data.pipeline_tag == "text-generation"
    metrics = {r.metric_type: r.metric_value for r in card.data.eval_results}
    results = json.loads((out / "eval_results.json").read_text())
    assert metrics["rewards/accuracies"] == results["eval_rewards/accuracies"]
    assert {"loss", "rewards/chosen", "rewards/rejected", "rewards/margins"} <= set(metrics)
    assert "| Rewards/accuracies |" in card.text.split("### Training results")[1]
    assert "rafailov2023direct" in card.text and "Direct Preference Optimization" in card.text
    assert "- beta: 0.1" in card.text and "- loss_type: sigmoid" in card.text


@needs_shared
def test_dpo_adapter_merges(dpo_run, tmp_path):
    from finetune.outputs import merge

    _, out, _ = dpo_run
    assert merge.merge_command(out, tmp_path / "merged", dtype="fp32", dequantize=True) < 1e-4
    assert "trained with DPO merged in" in (tmp_path / "merged" / "README.md").read_text()


def test_dpo_on_a_pre_quantized_checkpoint_then_resumes(tiny_model_dir, tmp_path):
    """A bnb-4bit checkpoint (as unsloth/...-bnb-4bit) trains as saved; the run resumes from its checkpoint."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    quant = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
    )
    prequantized = tmp_path / "tiny-bnb-4bit"
    AutoModelForCausalLM.from_pretrained(tiny_model_dir, quantization_config=quant).save_pretrained(
        prequantized
    )
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(prequantized)
    data = write(tmp_path / "pairs.jsonl", pairs(sentiment_rows(24)))

    cfg = dpo_cfg(prequantized, tmp_path, data, max_steps=2, save_steps=2)
    out = one_thread_run(cfg)
    first = history(out)
    assert [e["step"] for e in first if "rewards/accuracies" in e] == [1, 2]
    assert json.loads((out / "adapter_config.json").read_text())["task_type"] == "CAUSAL_LM"

    longer = cfg.model_copy(update={"max_steps": 4})
    one_thread_run(longer, resume=True)
    resumed = history(out)
    assert [e["step"] for e in resumed if "rewards/accuracies" in e] == [1, 2, 3, 4]
    assert resumed[:2] == first[:2]  # steps 1-2 come from checkpoint-2, not a second run of them


def test_trl_arguments_follow_the_config(tiny_model_dir, tmp_path):
    from transformers import TrainingArguments

    cfg = dpo_cfg(
        tiny_model_dir, tmp_path, tmp_path, rl_beta=0.3, dpo_loss_type=["sigmoid", "sft"], lora_dropout=0.1
    )
    notes: list[str] = []
    args = rl.trl_arguments(cfg, TrainingArguments(str(tmp_path / "out"), learning_rate=1e-3, seed=5), notes)
    assert (args.beta, args.loss_type, args.max_length, args.learning_rate, args.seed) == (
        0.3, ["sigmoid", "sft"], None, 1e-3, 5,
    )  # fmt: skip
    assert (
        args.bf16 is False and args.gradient_checkpointing is False
    )  # not TRL's defaults (bf16 on, checkpointing)
    assert notes and notes[0].startswith("lora_dropout: 0.1 is switched off for dpo training")
    reward = cfg.model_copy(update={"rl": None, "rl_beta": None, "dpo_loss_type": None, "reward_model": True})
    assert (
        type(rl.trl_arguments(reward, TrainingArguments(str(tmp_path / "o")), [])).__name__ == "RewardConfig"
    )


def test_dpo_after_sft_holds_the_policy_to_the_sft_adapter(trained_run, tiny_model_dir, tmp_path):
    """lora_model_dir: the SFT adapter is both the starting policy and the reference (TRL's frozen `ref` copy)."""
    data = write(tmp_path / "pairs.jsonl", pairs(sentiment_rows(16)))
    cfg = dpo_cfg(
        tiny_model_dir, tmp_path, data, adapter="qlora", load_in_4bit=True, lora_model_dir=str(trained_run),
        max_steps=2, datasets=[{"path": str(data), "type": {**PAIR_TYPE, "prompt_format": "[INST] {prompt} [/INST]"}}],
    )  # fmt: skip
    watch = Watch()
    out = one_thread_run(cfg, callbacks=[watch.callback])
    first = next(e for e in history(out) if "rewards/chosen" in e)
    assert (
        first["rewards/chosen"] == 0.0 and first["rewards/rejected"] == 0.0
    )  # not rounded apart by TRL's bf16 cast
    assert watch.adapters == ["default", "ref"]
    assert (out / "ref" / "adapter_config.json").is_file()  # TRL saves the reference copy beside the adapter


@needs_shared
def test_dpo_adapter_generates_and_evaluates_in_its_prompt_format(dpo_run, tmp_path):
    import shutil

    from finetune.inference import evaluate, generate

    cfg, out, _ = dpo_run
    run = shutil.copytree(out, tmp_path / "run")  # `finetune eval` writes its results into the run folder
    text = generate.generate_command(run, "Profits rose .", max_new_tokens=3, write=lambda s: None)
    assert isinstance(text, str)
    entry = evaluate.run(run, cfg.test_datasets[0].path, limit=6, max_new_tokens=3)  # chosen = the target
    assert entry["examples"] == 6 and 0 <= entry["accuracy"] <= 1
    assert entry["task"] == "classification"


def test_a_reward_model_refuses_to_generate(tmp_path):
    from finetune.errors import UserError
    from finetune.inference import generate

    cfg = config.validate(
        {"base_model": "org/m", "adapter": "lora", "reward_model": True, "datasets": [{"path": "org/d"}]}
    )
    (tmp_path / "config.yml").write_text(config.to_yaml(cfg))
    with pytest.raises(UserError, match="a reward model scores text and does not generate"):
        generate.load(tmp_path)
