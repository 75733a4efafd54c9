"""rl: grpo through `finetune train`: TRL's GRPOTrainer on the prompts of SFT-format data, rewarded by built-in
and user functions; the reference is the base with the adapter off. Tiny random models check mechanics (the
metrics are logged, the adapter moves, resume/merge/card work), not quality (FACTS.md); the real model's
reward curve is benchmarks/grpo_real.py's job."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import one_thread_run, send_signal, sentiment_rows
from finetune import config
from finetune.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
TEXT_TYPE = {
    "field_instruction": "context", "field_output": "target",
    "format": "{instruction}", "no_input_format": "{instruction}",
}  # fmt: skip
REWARDS = '''
def longer(completions, **kwargs):
    """A reward that varies between completions, so the tiny model gets a gradient."""
    return [float(len(c)) for c in completions]


def broken(completions, reference, **kwargs):
    return [1 / 0 if r == "neutral" else 0.0 for r in reference]
'''


def write_run(root: Path, base_model, rows: list[dict] | None = None, **extra) -> Path:
    """data.jsonl, rewards.py and grpo.yaml in `root`; returns the config path."""
    root.mkdir(parents=True, exist_ok=True)
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in (rows or sentiment_rows(16))))
    (root / "rewards.py").write_text(REWARDS)
    trl = {
        "num_generations": 2,
        "max_completion_length": 4,
        "reward_funcs": ["label", "rewards.longer", "format"],
    }
    trl.update(extra.pop("trl", {}))
    raw = {
        "base_model": str(base_model), "adapter": "lora", "lora_r": 8, "lora_alpha": 16, "lora_target_linear": True,
        "rl": "grpo", "trl": trl, "datasets": [{"path": str(data), "type": TEXT_TYPE}], "sequence_len": 128,
        "output_dir": str(root / "out"), "micro_batch_size": 4, "learning_rate": 1e-2,
        "lr_scheduler": "constant", "logging_steps": 1, "seed": 3, "max_steps": 3, **extra,
    }  # fmt: skip
    path = root / "grpo.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def history(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def adapters_seen():
    """A callback recording the adapters of the Trainer's model when training starts."""
    from transformers import TrainerCallback

    class Seen(TrainerCallback):
        adapters = None

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            Seen.adapters = sorted(model.peft_config)

    return Seen()


@pytest.fixture(scope="module")
def grpo_run(tiny_model_dir, tmp_path_factory):
    """QLoRA GRPO, 3 steps of 2 prompts x 2 completions, rewards label + rewards.longer + format."""
    root = tmp_path_factory.mktemp("grpo")
    cfg = config.load(write_run(root, tiny_model_dir, adapter="qlora", trl={"beta": 0.04}))
    seen = adapters_seen()
    out = one_thread_run(cfg, callbacks=[seen])
    return cfg, out, seen


def test_grpo_logs_rewards_kl_and_lengths_and_moves_the_adapter(grpo_run):
    from safetensors.torch import load_file

    _, out, seen = grpo_run
    steps = [e for e in history(out) if "reward" in e]
    assert [e["step"] for e in steps] == [1, 2, 3]
    for e in steps:
        assert {"reward_std", "kl", "completions/mean_length", "rewards/label/mean", "rewards/longer/mean",
                "rewards/longer/std", "rewards/format/mean"} <= set(e)  # fmt: skip
        assert 0 < e["completions/mean_length"] <= 4
        # the summed reward is the sum of the functions' means (weights 1)
        parts = e["rewards/label/mean"] + e["rewards/longer/mean"] + e["rewards/format/mean"]
        assert e["reward"] == pytest.approx(parts, rel=1e-5)
    assert (
        steps[0]["kl"] == 0.0
    )  # policy == reference before the first update: the adapter starts as the base
    assert steps[-1]["kl"] > 0
    # the reference is the base with the adapter off: TRL's frozen copy of the adapter is gone
    assert seen.adapters == ["default"]
    weights = load_file(out / "adapter_model.safetensors")
    assert any(float(w.abs().max()) > 0 for k, w in weights.items() if "lora_B" in k)  # B starts at zero
    assert (out / "reward.png").is_file() and not (out / "loss.png").exists()


def test_grpo_card_has_the_reward_curve_settings_and_citation(grpo_run):
    from huggingface_hub import ModelCard

    _, out, _ = grpo_run
    card = ModelCard.load(out / "README.md")
    assert {"grpo", "trl", "qlora"} <= set(card.data.tags)
    assert "trained with GRPO" in card.text and "label, rewards.longer, format" in card.text
    assert "![Mean reward during training](reward.png)" in card.text
    assert "- num_generations: 2" in card.text and "- beta: 0.04" in card.text
    assert "| Reward |" in card.text.split("### Training results")[1]
    assert "shao2024deepseekmath" in card.text


def test_grpo_adapter_merges_with_its_reward_curve(grpo_run, tmp_path):
    from finetune.outputs import merge

    _, out, _ = grpo_run
    assert merge.merge_command(out, tmp_path / "merged", dtype="fp32", dequantize=True) < 1e-4
    assert "trained with GRPO merged in" in (tmp_path / "merged" / "README.md").read_text()
    assert (tmp_path / "merged" / "reward.png").is_file()


def test_grpo_sigterm_checkpoints_and_resumes(tiny_model_dir, tmp_path):
    """LoRA policy: stopped by SIGTERM, checkpointed, resumed to the end; the steps before come from the checkpoint."""
    cfg = config.load(write_run(tmp_path, tiny_model_dir, max_steps=4))
    with pytest.raises(SystemExit) as stopped:
        one_thread_run(cfg, callbacks=[send_signal(1)])
    assert stopped.value.code == 128 + signal.SIGTERM
    out = Path(cfg.output_dir)
    checkpoint = sorted(out.glob("checkpoint-*"))
    assert len(checkpoint) == 1 and not (out / "adapter_model.safetensors").exists()
    first = history(out)
    one_thread_run(cfg, resume=True)
    resumed = [e for e in history(out) if "reward" in e]
    assert [e["step"] for e in resumed] == [1, 2, 3, 4]
    saved = int(checkpoint[0].name.split("-")[1])
    keys = ("step", "reward", "kl", "loss", "grad_norm", "completions/mean_length")
    before = [[e[k] for k in keys] for e in first if "reward" in e][:saved]
    assert [[e[k] for k in keys] for e in resumed if e["step"] <= saved] == before
    assert (out / "adapter_model.safetensors").is_file() and (out / "README.md").is_file()


# ---------------------------------------------------------------- one-line errors


def test_a_missing_reward_function_fails_validate_in_one_line_exit_2(tiny_model_dir, tmp_path):
    path = write_run(
        tmp_path, tiny_model_dir, trl={"reward_funcs": ["label", "rewards.nope", "nomodule.f", "lbl"]}
    )
    result = subprocess.run(
        [sys.executable, "-m", "finetune.cli", "validate", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 3, lines
    assert "trl.reward_funcs[1]: " in lines[0] and "rewards.py defines no function 'nope'" in lines[0]
    assert "trl.reward_funcs[2]: no module 'nomodule' next to the config" in lines[1]
    assert (
        "trl.reward_funcs[3]: 'lbl' is neither a built-in reward (label, numeric, exact, format)" in lines[2]
    )


def test_a_reward_function_that_raises_is_one_line_naming_it_and_the_row(tiny_model_dir, tmp_path):
    cfg = config.load(write_run(tmp_path, tiny_model_dir, trl={"reward_funcs": ["rewards.broken"]}))
    with pytest.raises(UserError) as err:
        one_thread_run(cfg)
    message = str(err.value)
    assert "\n" not in message and message.startswith(
        "trl.reward_funcs: rewards.broken raised ZeroDivisionError"
    )
    line = int(message.rsplit(":", 1)[1].rstrip(")"))
    assert f"{tmp_path / 'data.jsonl'}:{line})" in message
    row = json.loads((tmp_path / "data.jsonl").read_text().splitlines()[line - 1])
    assert row["target"] == "neutral"  # the very row the function fails on
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the run's handlers are given back


def test_a_row_without_the_prompt_field_is_one_line_before_any_model_loads(tiny_model_dir, tmp_path):
    from finetune import data
    from finetune.data.tokenizer import load_tokenizer

    rows = sentiment_rows(4)
    del rows[2]["context"]
    cfg = config.load(write_run(tmp_path, tiny_model_dir, rows=rows))
    with pytest.raises(UserError) as err:
        data.prepare(cfg, load_tokenizer(cfg))
    assert str(err.value) == f"{tmp_path / 'data.jsonl'}:3: missing field 'context' (datasets[0], rl: grpo)"


def test_trl_keys_are_checked_and_unimplemented_ones_refused(tiny_model_dir, tmp_path):
    def problems(**extra):
        with pytest.raises(config.ConfigError) as exc:
            config.load(write_run(tmp_path, tiny_model_dir, **extra))
        return [p.split(": ", 1)[1] for p in exc.value.problems]

    assert problems(trl={"vllm_server_host": "h"}) == [
        "trl: vllm_server_host: not supported by finetune yet (remove it or set it to null)"
    ]
    assert problems(trl={"num_generations": 3}) == [
        "trl.num_generations: 3 must divide micro_batch_size x gradient_accumulation_steps (4): each prompt's "
        "completions are one group"
    ]
    assert problems(trl={"reward_weights": [1.0]}) == [
        "trl.reward_weights: 1 weights for 3 reward functions: give one each"
    ]
    assert problems(val_set_size=0.1)[0].startswith("val_set_size: not for rl: grpo yet")
    assert problems(rl="dpo")[0] == "trl: only used by rl: grpo: set rl: grpo or remove it"
    # axolotl's defaults for keys finetune does not implement are accepted as "off"
    config.load(write_run(tmp_path, tiny_model_dir, trl={"vllm_device": "auto", "sync_ref_model": False}))


def test_use_vllm_is_refused_on_cpu_in_one_line(tiny_model_dir, tmp_path):
    from finetune.train import grpo

    cfg = config.load(write_run(tmp_path, tiny_model_dir, trl={"use_vllm": True}))
    with pytest.raises(UserError, match=r"^trl.use_vllm: vLLM generation needs a GPU \(none here\)"):
        grpo.check_vllm(cfg)


# ---------------------------------------------------------------- built-in rewards and arguments


def test_builtin_rewards_score_as_finetune_eval_does():
    from finetune.train import rewards

    refs = ["positive", "negative", "neutral"]
    label = rewards.builtin("label", refs, end_ids={2})
    got = label(completions=[" Positive.", "it is NEUTRAL", "negative or neutral"], reference=refs)
    assert got == [1.0, 0.0, 0.0]  # case/punctuation-insensitive; the first label named counts
    numeric = rewards.builtin("numeric", [], end_ids={2})
    assert numeric(completions=["about 12.05%", "0.5", "n/a"], reference=["0.12", "1/2", "3"]) == [
        1.0,
        0.0,
        0.0,
    ]
    exact = rewards.builtin("exact", [], end_ids={2})
    assert exact(completions=["Net income.", "net"], reference=["net income", "net income"]) == [1.0, 0.0]
    fmt = rewards.builtin("format", [], end_ids={2, 7})
    assert fmt(completion_ids=[[5, 2], [5, 5], [7], []]) == [1.0, 0.0, 1.0, 0.0]


def test_grpo_arguments_follow_the_config(tiny_model_dir, tmp_path):
    from transformers import TrainingArguments

    from finetune.train import grpo

    cfg = config.load(
        write_run(
            tmp_path,
            tiny_model_dir,
            trl={"beta": 0.0, "temperature": 0.7, "scale_rewards": False, "reward_weights": [1.0, 0.1, 0.5]},
        )  # fmt: skip
    )
    args = grpo.grpo_arguments(cfg, TrainingArguments(str(tmp_path / "o"), learning_rate=3e-4, bf16=False))
    assert (args.num_generations, args.max_completion_length, args.beta, args.temperature) == (2, 4, 0.0, 0.7)
    assert args.scale_rewards == "none" and args.reward_weights == [1.0, 0.1, 0.5]
    assert args.learning_rate == 3e-4 and args.bf16 is False and args.use_vllm is False


def test_the_grpo_example_runs_as_a_smoke_test(monkeypatch):
    """examples/grpo.yaml with its own reward file (grpo_rewards.py beside it), on the tiny model."""
    from finetune import train

    monkeypatch.chdir(ROOT)  # the example names its data relative to the repository
    out = train.run(config.load(ROOT / "examples" / "grpo.yaml"), smoke=True)
    logged = [e for e in history(out) if "reward" in e]
    assert len(logged) == 2 and all("rewards/brevity/mean" in e for e in logged)
    assert (out / "README.md").is_file() and (out / "reward.png").is_file()


@pytest.mark.parametrize("fmt", ["text", "chat"])
def test_grpo_prompts_tokenize_as_sft_prompts(fmt, tiny_model_dir, tmp_path):
    """TRL tokenizes the prompt text with the tokenizer's special tokens: that must give the very ids SFT
    training and `finetune generate` use (one BOS, also when the chat template writes its own)."""
    from finetune import data
    from finetune.data.tokenizer import load_tokenizer

    rows = sentiment_rows(4)
    if fmt == "chat":
        rows = [{"messages": [{"role": "user", "content": r["context"]}, {"role": "assistant", "content": r["target"]}]}
                for r in rows]  # fmt: skip
    path = write_run(tmp_path, tiny_model_dir, rows=rows)
    if fmt == "chat":
        raw = yaml.safe_load(path.read_text())
        raw["datasets"][0]["type"] = "chat_template"
        path.write_text(yaml.safe_dump(raw))
    cfg = config.load(path)
    tok = load_tokenizer(cfg)
    table = data.prepare(cfg, tok).train
    assert table["reference"] == [r["target"] for r in sentiment_rows(4)]
    for row, prompt in zip(rows, table["prompt"], strict=True):
        assert tok(prompt)["input_ids"] == data.encode_prompt(cfg, cfg.datasets[0], row, tok)
