# ruff: noqa: E402
"""Full fine-tuning (no `adapter:`) and `unfrozen_parameters` (config/full_checks.py, model/unfrozen.py), on the
tiny model: what trains, what is saved, what reads it back, and resuming."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from conftest import INST_FORMAT as PROMPT
from conftest import send_signal
from finetune import config, train
from finetune.errors import UserError
from finetune.train import checkpoints

ROOT = Path(__file__).resolve().parents[2]
QA = ROOT / "examples" / "finance_qa.jsonl"

pytestmark = [pytest.mark.usefixtures("one_thread")]


def raw_cfg(base, out, prepared, **over) -> dict:
    raw = {
        "base_model": str(base),
        "datasets": [{"path": str(QA), "type": PROMPT}],
        "sequence_len": 256,
        "dataset_prepared_path": str(prepared),
        "dataset_processes": 1,
        "output_dir": str(out),
        "micro_batch_size": 4,
        "learning_rate": 0.01,
        "lr_scheduler": "constant",
        "optimizer": "adamw_torch",
        "logging_steps": 1,
        "max_steps": 3,
        "seed": 7,
        **over,
    }
    return {k: v for k, v in raw.items() if v is not None}


def make_cfg(base, out, prepared, **over) -> config.Config:
    return config.validate(raw_cfg(base, out, prepared, **over))


def state_of(folder: Path, name: str = "model.safetensors") -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / name))


# ---------------------------------------------------------------- config


def test_no_adapter_is_full_fine_tuning_and_quantized_bases_are_refused(tiny_model_dir, tmp_path):
    assert make_cfg(tiny_model_dir, tmp_path / "o", tmp_path).adapter is None
    assert config.validate({**raw_cfg(tiny_model_dir, tmp_path, tmp_path), "adapter": None}).adapter is None
    cases = {
        "load_in_4bit": {"load_in_4bit": True},
        "load_in_8bit": {"load_in_8bit": True},
        "rl": {"rl": "dpo"},
        "loraplus_lr_ratio": {"loraplus_lr_ratio": 16},
        "fp16": {"fp16": True},
    }
    for key, over in cases.items():
        with pytest.raises(config.ConfigError) as exc:
            make_cfg(tiny_model_dir, tmp_path / "o", tmp_path, **over)
        lines = [p for p in exc.value.problems if f"{key}:" in p]
        assert len(lines) == 1 and "\n" not in lines[0], exc.value.problems
    with pytest.raises(config.ConfigError, match=r"unfrozen_parameters\[0\]: .*index ranges"):
        make_cfg(tiny_model_dir, tmp_path / "o", tmp_path, unfrozen_parameters=["embed_tokens.weight$[:32]"])
    with pytest.raises(config.ConfigError, match=r"unfrozen_parameters\[1\]: .*not a valid regular"):
        make_cfg(tiny_model_dir, tmp_path / "o", tmp_path, unfrozen_parameters=["lm_head", "layers.(0"])


def test_axolotl_old_tokens_mapping_is_read_as_special_tokens(tiny_model_dir, tmp_path):
    tokens = {"pad_token": "<pad>", "eos_token": "</s>"}
    cfg = make_cfg(
        tiny_model_dir, tmp_path / "o", tmp_path, tokens=tokens, special_tokens={"bos_token": "<s>"}
    )
    assert cfg.special_tokens == {"bos_token": "<s>", **tokens} and cfg.tokens is None
    assert make_cfg(tiny_model_dir, tmp_path / "o", tmp_path, tokens=["<x>"]).tokens == ["<x>"]  # new tokens
    with pytest.raises(config.ConfigError, match="tokens: pad_token is also set in special_tokens"):
        make_cfg(
            tiny_model_dir, tmp_path / "o", tmp_path, tokens=tokens, special_tokens={"pad_token": "<unk>"}
        )


# ---------------------------------------------------------------- full fine-tuning, end to end


@pytest.fixture(scope="module")
def full_run(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "out"
    cfg = make_cfg(tiny_model_dir, out, tmp_path_factory.mktemp("prepared"), save_steps=2)
    train.run(cfg)
    return cfg, out


def test_full_fine_tune_trains_every_weight_and_saves_a_loadable_model(full_run, tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg, out = full_run
    assert not (out / "adapter_config.json").exists()
    before, after = state_of(tiny_model_dir), state_of(out)
    assert before.keys() == after.keys()
    unchanged = [k for k in before if torch.equal(before[k], after[k])]
    assert unchanged == []  # every weight trained
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, after[key], rtol=0, atol=0)
    assert len(tokenizer) == len(AutoTokenizer.from_pretrained(tiny_model_dir))
    card = (out / "README.md").read_text()
    assert "full fine-tune of" in card and "full-finetune" in card and "library_name: transformers" in card
    assert (
        "- lora_r:" not in card and "PeftModel" not in card and "AutoModelForCausalLM.from_pretrained" in card
    )


def test_full_fine_tune_is_read_by_generate_push_export_and_refused_by_merge(full_run, tmp_path):
    from finetune.inference import generate
    from finetune.outputs import merge, push_files

    _, out = full_run
    loaded = generate.load(out, say=lambda m: None)
    assert loaded.what == "fully fine-tuned"  # the folder is the model (not "merged": nothing was merged)
    with pytest.raises(UserError, match="a full fine-tune .*nothing to merge") as exc:
        merge.merge_command(out, tmp_path / "merged")
    assert len(exc.value.problems) == 1 and not (tmp_path / "merged").exists()
    names = {u.path_in_repo for u in push_files.run_uploads(out)}
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md", "config.yml"} <= names
    from finetune.outputs import export  # the folder is exported as it is, no merge, and checked

    assert export.export_command(out, tmp_path / "gguf", quant="f32") < 1e-4
    assert {p.name for p in (tmp_path / "gguf").iterdir()} == {"out.gguf", "Modelfile"}


def test_full_fine_tune_resumes_equal_to_uninterrupted(full_run, tiny_model_dir, tmp_path, capsys):
    cfg, straight = full_run
    out = tmp_path / "interrupted"
    cfg = make_cfg(tiny_model_dir, out, Path(cfg.dataset_prepared_path), save_steps=2)
    with pytest.raises(SystemExit) as stopped:
        train.run(cfg, callbacks=[send_signal(1)])
    assert stopped.value.code == 128 + signal.SIGTERM
    saved = checkpoints.checkpoints(out)
    assert not (out / "model.safetensors").exists() and (saved[-1] / "model.safetensors").is_file()
    assert checkpoints.problem(saved[-1]) is None
    train.run(cfg, resume=True)
    assert "resuming from" in capsys.readouterr().err
    a, b = state_of(straight), state_of(out)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6)
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 3


# ---------------------------------------------------------------- unfrozen_parameters

PATTERNS = ["^model.layers.0.mlp.*", "^model.norm.weight$"]


def _matches(name: str) -> bool:
    return name.startswith("model.layers.0.mlp.") or name == "model.norm.weight"


def test_unfrozen_parameters_without_adapter_train_exactly_the_matches(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    train.run(make_cfg(tiny_model_dir, out, tmp_path / "prep", unfrozen_parameters=PATTERNS))
    before, after = state_of(tiny_model_dir), state_of(out)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {k for k in before if _matches(k)} and len(changed) == 4  # gate/up/down + final norm


@pytest.fixture(scope="module")
def lora_unfrozen(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora-unfrozen") / "out"
    over = {"adapter": "lora", "lora_target_modules": ["q_proj", "v_proj"], "unfrozen_parameters": PATTERNS}
    cfg = make_cfg(tiny_model_dir, out, tmp_path_factory.mktemp("prepared"), save_steps=2, **over)
    train.run(cfg)
    return cfg, out


def test_unfrozen_parameters_beside_lora_are_saved_and_read_back(lora_unfrozen, tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune.model import generation
    from finetune.model.unfrozen import UNFROZEN_FILE

    _, out = lora_unfrozen
    before, saved = state_of(tiny_model_dir), state_of(out, UNFROZEN_FILE)
    assert set(saved) == {k for k in before if _matches(k)}  # base names, exactly the matches
    assert all(not torch.equal(saved[k], before[k]) for k in saved)  # each trained
    assert (out / "checkpoint-2" / UNFROZEN_FILE).is_file()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = generation.attach_adapter(base, AutoTokenizer.from_pretrained(out), out)
    weights = {n.removeprefix("base_model.model."): p for n, p in model.named_parameters()}
    for key, value in saved.items():
        torch.testing.assert_close(weights[key], value, rtol=0, atol=0)
    from finetune.outputs import merge  # the merge check compares with base + adapter + these weights

    assert merge.merge_command(out, tmp_path / "merged", dtype="fp32") < 1e-4
    merged = state_of(tmp_path / "merged")
    torch.testing.assert_close(merged["model.norm.weight"], saved["model.norm.weight"], rtol=0, atol=0)


def test_unfrozen_beside_lora_resumes_equal_to_uninterrupted(lora_unfrozen, tiny_model_dir, tmp_path):
    from finetune.model.unfrozen import UNFROZEN_FILE

    cfg, straight = lora_unfrozen
    out = tmp_path / "interrupted"
    cfg = config.validate({**config.resolved_dict(cfg), "output_dir": str(out)})
    with pytest.raises(SystemExit):
        train.run(cfg, callbacks=[send_signal(1)])  # stops after step 2 of 3
    train.run(cfg, resume=True)
    for name in (UNFROZEN_FILE, "adapter_model.safetensors"):
        a, b = state_of(straight, name), state_of(out, name)
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6)


def test_unfrozen_pattern_matching_nothing_or_4bit_weights_is_one_line(tiny_model_dir, tmp_path):
    cfg = make_cfg(
        tiny_model_dir, tmp_path / "a", tmp_path / "p", unfrozen_parameters=["lm_head", "nothing.here"]
    )
    with pytest.raises(UserError) as exc:
        train.run(cfg)
    assert (
        exc.value.problems == [exc.value.problems[0]]
        and "'nothing.here' matches no parameter" in exc.value.problems[0]
    )
    over = {"adapter": "qlora", "load_in_4bit": True, "unfrozen_parameters": ["^model.layers.0.self_attn.*"]}
    with pytest.raises(UserError, match=r"matches \d+ quantized weight\(s\)"):
        train.run(make_cfg(tiny_model_dir, tmp_path / "b", tmp_path / "p", **over))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # refused before writing


# ---------------------------------------------------------------- plan


def test_plan_counts_full_gradients_and_optimizer_states_and_fixes_say_zero3_or_8bit(tmp_path):
    from conftest import LLAMA, model_folder
    from finetune.plan import devices
    from finetune.plan.estimate import estimate
    from finetune.plan.report import make_plan

    base = model_folder(tmp_path, LLAMA["8b"])
    raw = raw_cfg(base, tmp_path / "o", tmp_path, bf16=True, gradient_checkpointing=True, micro_batch_size=1,
                  optimizer="adamw_torch_fused", sequence_len=2048)  # fmt: skip
    full = config.validate(raw)
    lora = config.validate({**raw, "adapter": "lora", "lora_target_linear": True})
    h100 = devices.gpu_device("h100-80gb")
    parts, lora_parts = estimate(full, h100).parts, estimate(lora, h100).parts
    assert parts["weight_gradients"] == pytest.approx(lora_parts["base_weights"])  # bf16, one per weight
    assert parts["optimizer_states"] == pytest.approx(8 * 8.03e9 / 2**30, rel=0.01)  # AdamW: 2 fp32 moments
    assert "adapter" not in parts
    plan = make_plan(full, devices.gpu_device("rtx4090"))  # a full-FT 8B on one 24 GB GPU
    assert not plan.fits and plan.fixes
    assert all("load_in_4bit" not in f for f in plan.fixes)  # 4-bit weights could not train
    assert any("zero3" in f for f in plan.fixes)
    assert make_plan(full, h100).fixes[0].startswith("optimizer: adamw_bnb_8bit")
    assert estimate(lora, devices.gpu_device("rtx4090")).fits  # the same run with LoRA fits


# ---------------------------------------------------------------- real configs' shapes on the tiny model

# llama-3__fft-8b.yaml's training keys (packing, checkpointing, paged 8-bit AdamW, cosine warm-up, evals)
FFT_8B = {
    "val_set_size": 0.1, "sample_packing": True, "gradient_accumulation_steps": 2, "micro_batch_size": 2,
    "num_epochs": 1, "max_steps": None, "optimizer": "paged_adamw_8bit", "lr_scheduler": "cosine",
    "learning_rate": 2e-5, "bf16": "auto", "gradient_checkpointing": True,
    "gradient_checkpointing_kwargs": {"use_reentrant": False}, "warmup_ratio": 0.1, "evals_per_epoch": 2,
    "saves_per_epoch": 1, "weight_decay": 0.0, "special_tokens": {"pad_token": "</s>"},
}  # fmt: skip
# mistral__bigstral__bigstral-ds-zero3.yaml's shape: head, embeddings and some layers' MLP unfrozen, a new token
BIGSTRAL = {
    "unfrozen_parameters": ["^lm_head.weight$", "^model.embed_tokens.weight$", "model.layers.[1-9]+.mlp"],
    "special_tokens": {"eos_token": "</s>"}, "tokens": ["<|im_start|>"], "optimizer": "adamw_bnb_8bit",
    "gradient_checkpointing": True, "learning_rate": 1e-3,
}  # fmt: skip


@pytest.mark.parametrize("shape", ["fft-8b", "bigstral"])
def test_real_config_shapes_train_on_the_tiny_model(shape, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    train.run(make_cfg(tiny_model_dir, out, tmp_path / "prep", **(FFT_8B if shape == "fft-8b" else BIGSTRAL)))
    before, after = state_of(tiny_model_dir), state_of(out)
    changed = {k for k in before if not torch.equal(before[k], after.get(k, before[k]))}
    if shape == "fft-8b":
        assert changed == set(before)  # every weight trained
        assert json.loads((out / "all_results.json").read_text())["eval_loss"] > 0
    else:
        matched = {"lm_head.weight", "model.embed_tokens.weight"} | {
            k for k in before if k.startswith("model.layers.1.mlp.")
        }
        grown = {k for k in after if after[k].shape != before[k].shape}
        assert grown == {"lm_head.weight", "model.embed_tokens.weight"}  # the new token's row
        assert changed - grown == matched - grown  # exactly the matched ones changed


def test_load_best_model_at_end_brings_back_the_best_unfrozen_weights(tiny_model_dir, tmp_path):
    from transformers import TrainerCallback

    from finetune.model.unfrozen import UNFROZEN_FILE

    class MoveAfterLastSave(TrainerCallback):
        """After the last checkpoint is written, move the live unfrozen weights: only a reload undoes it."""

        def on_save(self, args, state, control, model=None, **kwargs):
            if state.global_step == state.max_steps:
                for name, param in model.named_parameters():
                    if param.requires_grad and "lora_" not in name:
                        param.data.add_(1.0)

    over = {"adapter": "lora", "lora_target_modules": ["q_proj"], "unfrozen_parameters": PATTERNS,
            "val_set_size": 8, "eval_steps": 1, "save_steps": 1, "load_best_model_at_end": True}  # fmt: skip
    out = tmp_path / "out"
    train.run(make_cfg(tiny_model_dir, out, tmp_path / "prep", **over), callbacks=[MoveAfterLastSave()])
    best = Path(json.loads((out / "trainer_state.json").read_text())["best_model_checkpoint"])
    final, kept = state_of(out, UNFROZEN_FILE), state_of(best, UNFROZEN_FILE)
    assert final.keys() == kept.keys()
    for key in kept:
        torch.testing.assert_close(final[key], kept[key], rtol=0, atol=0)
