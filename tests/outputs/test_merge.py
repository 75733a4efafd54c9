"""`finetune merge`: merged logits equal base + adapter (LoRA, DoRA, 4-bit-trained), and the folder loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from finetune import config
from finetune.errors import UserError
from finetune.outputs import merge

# bitsandbytes quantizes on the GPU when there is one (and rounds differently from its CPU kernel)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _perturb(peft_model, seed: int) -> None:
    """Fresh LoRA B is zero (the adapter is a no-op): give every adapter weight random values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                noise = torch.randn(param.shape, generator=gen) * 0.2
                param.copy_(param * (1 + noise) if "magnitude" in name else noise)


def make_run(root: Path, tiny_model_dir: Path, *, dora=False, four_bit=False, new_token=False) -> Path:
    """A run folder: a real adapter (random weights) trained-shape on the tiny model + config.yml."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune import model as model_module

    out = root / "run"
    raw = {
        "base_model": str(tiny_model_dir),
        "adapter": "qlora" if four_bit else "lora",
        "lora_r": 4,
        "lora_alpha": 8,
        "lora_target_modules": ["q_proj", "v_proj", "down_proj"],
        "peft_use_dora": dora,
        "datasets": [{"path": "AdaptLLM/finance-tasks"}],
        "output_dir": str(out),
    }
    cfg = config.validate(raw)
    quant = None
    if four_bit:
        prec = model_module.Precision(bf16=False, fp16=False, tf32=None, dtype="float32")
        quant = model_module.quantization_config(cfg, prec)
    base = AutoModelForCausalLM.from_pretrained(
        tiny_model_dir, dtype=torch.float32, **({"quantization_config": quant} if quant else {})
    )
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    to_save = None
    if new_token:
        tokenizer.add_tokens(["<|fin_ratio|>"])
        base.resize_token_embeddings(len(tokenizer))
        to_save = ["embed_tokens", "lm_head"]
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=raw["lora_target_modules"], use_dora=dora,
                      modules_to_save=to_save)  # fmt: skip
    peft_model = get_peft_model(base, lora)
    _perturb(peft_model, seed=1)
    if new_token:
        with torch.no_grad():
            for name, param in peft_model.named_parameters():
                if "modules_to_save" in name:
                    param.add_(torch.randn_like(param) * 0.1)
    peft_model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "config.yml").write_text(config.to_yaml(cfg, {"finetune": "0.1.0"}))
    (out / "all_results.json").write_text(json.dumps({"mixed_precision": "no", "device": DEVICE}))
    return out


def reference_logits(run: Path, tiny_model_dir: Path, four_bit: bool = False) -> list:
    """Base + adapter, unmerged, loaded the way training ran it (4-bit NF4 when it trained on 4-bit)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune import model as model_module

    quant = None
    if four_bit:
        cfg = config.load(run / "config.yml")
        prec = model_module.Precision(bf16=False, fp16=False, tf32=None, dtype="float32")
        quant = model_module.quantization_config(cfg, prec)
    tokenizer = AutoTokenizer.from_pretrained(run)
    base = AutoModelForCausalLM.from_pretrained(
        tiny_model_dir, dtype=torch.float32, **({"quantization_config": quant} if quant else {})
    )
    if len(tokenizer) > base.get_input_embeddings().num_embeddings:
        base.resize_token_embeddings(len(tokenizer))
    model = PeftModel.from_pretrained(base, run)
    model_module.disable_cpu_bf16_repack(model)  # else CPU eval runs a bf16 4-bit kernel (FACTS.md)
    return merge.logits(model, merge.prompt_ids(tokenizer))


def merged_logits(out: Path) -> list:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    return merge.logits(model, merge.prompt_ids(AutoTokenizer.from_pretrained(out)))


@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
def test_merge_matches_base_plus_adapter(tmp_path, tiny_model_dir, dora):
    from huggingface_hub import ModelCard

    run = make_run(tmp_path, tiny_model_dir, dora=dora)
    out = tmp_path / "merged"
    diff = merge.merge_command(run, out, dtype="fp32")
    assert diff < 1e-4
    reference = reference_logits(run, tiny_model_dir)
    merged = merged_logits(out)
    assert merge.max_difference(merged, reference) < 1e-4
    # the adapter is not a no-op, so the check above could fail
    plain = merged_logits(tiny_model_dir)
    assert merge.max_difference(plain, reference) > 1e-2
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "generation_config.json", "tokenizer.json", "README.md", "config.yml"} <= names
    assert any(n.endswith(".safetensors") for n in names) and not any(n.startswith("adapter_") for n in names)
    data = ModelCard.load(out / "README.md").data.to_dict()
    assert data["library_name"] == "transformers" and "merged" in data["tags"]
    assert "dora" in data["tags"] if dora else "dora" not in data["tags"]


def test_merge_4bit_trained_adapter_dequantized(tmp_path, tiny_model_dir):
    run = make_run(tmp_path, tiny_model_dir, four_bit=True)
    four_bit_reference = reference_logits(run, tiny_model_dir, four_bit=True)

    merge.merge_command(run, tmp_path / "dq", dtype="fp32", dequantize=True)
    assert merge.max_difference(merged_logits(tmp_path / "dq"), four_bit_reference) < 1e-4

    # without --dequantize the adapter lands on the full-precision base: base + adapter, not what it saw
    merge.merge_command(run, tmp_path / "plain", dtype="fp32")
    plain = merged_logits(tmp_path / "plain")
    assert merge.max_difference(plain, reference_logits(run, tiny_model_dir)) < 1e-4
    assert merge.max_difference(plain, four_bit_reference) > 1e-3
    text = (tmp_path / "dq" / "README.md").read_text()
    assert "NF4-dequantized base" in text


@pytest.mark.parametrize("train_dtype", ["float32", "bfloat16"])
def test_nf4_round_trip_equals_what_bitsandbytes_trained_on(tmp_path, tiny_model_dir, train_dtype):
    """Each weight of merge's NF4-rounded base equals bitsandbytes' own dequantization of the 4-bit model loaded
    as training loads it (and lm_head, never quantized, stays as it is)."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as F
    from transformers import AutoModelForCausalLM

    from finetune import model as model_module
    from finetune.outputs import run_dir

    run = make_run(tmp_path, tiny_model_dir, four_bit=True)
    prec = model_module.Precision(bf16=False, fp16=False, tf32=None, dtype=train_dtype)
    dtype = getattr(torch, train_dtype)
    cfg = config.load(run / "config.yml")
    four_bit = AutoModelForCausalLM.from_pretrained(
        tiny_model_dir, dtype=dtype, quantization_config=model_module.quantization_config(cfg, prec)
    )
    saved = run_dir.read_run(run)
    plain = merge.load_base(
        saved, merge.base_config(saved), train_dtype, merge.nf4_settings(saved, train_dtype), DEVICE
    )
    modules = dict(plain.named_modules())
    checked = 0
    for name, module in four_bit.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            expected = F.dequantize_4bit(module.weight.data, module.weight.quant_state).cpu()
            assert torch.equal(modules[name].weight.data, expected), name
            checked += 1
    assert checked == 14
    assert torch.equal(
        plain.lm_head.weight, four_bit.lm_head.weight.cpu()
    )  # not quantized in training either


def test_merge_prequantized_base(tmp_path, tiny_model_dir):
    """A base saved in 4-bit (like unsloth/...-bnb-4bit) is dequantized, never merged in 4-bit."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune import model as model_module

    cfg = config.validate(
        {"base_model": str(tiny_model_dir), "adapter": "qlora", "datasets": [{"path": "a/b"}]}
    )
    prec = model_module.Precision(bf16=False, fp16=False, tf32=None, dtype="float32")
    quant = model_module.quantization_config(cfg, prec)
    base_dir = tmp_path / "base-bnb-4bit"
    AutoModelForCausalLM.from_pretrained(tiny_model_dir, quantization_config=quant).save_pretrained(base_dir)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(base_dir)
    run = make_run(tmp_path, base_dir)  # config says lora: the checkpoint itself carries the quantization
    reference = reference_logits(run, base_dir)  # loads 4-bit, as training did
    out = tmp_path / "merged"
    merge.merge_command(run, out, dtype="fp32")
    assert merge.max_difference(merged_logits(out), reference) < 1e-4
    assert "quantization_config" not in json.loads((out / "config.json").read_text())


def test_merge_added_tokens_and_shards(tmp_path, tiny_model_dir):
    run = make_run(tmp_path, tiny_model_dir, new_token=True)
    out = tmp_path / "merged"
    merge.merge_command(run, out, dtype="fp32", max_shard_size="200KB")
    assert len(list(out.glob("*.safetensors"))) > 1 and (out / "model.safetensors.index.json").is_file()
    assert merge.max_difference(merged_logits(out), reference_logits(run, tiny_model_dir)) < 1e-4


def test_merge_bf16_default(tmp_path, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    run = make_run(tmp_path, tiny_model_dir)
    diff = merge.merge_command(run, tmp_path / "merged")
    assert diff < 0.1  # bf16 rounding of the merged weights
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert model.dtype == torch.bfloat16


def test_merge_refuses(tmp_path, tiny_model_dir):
    run = make_run(tmp_path, tiny_model_dir)
    out = tmp_path / "merged"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(UserError, match="already exists"):
        merge.merge_command(run, out, dtype="fp32")
    assert (out / "keep.txt").is_file()
    with pytest.raises(UserError, match="run folder"):
        merge.merge_command(run, run, dtype="fp32", overwrite=True)
    with pytest.raises(UserError, match="--dtype"):
        merge.merge_command(run, tmp_path / "x", dtype="int8")
    with pytest.raises(UserError, match="--dequantize"):
        merge.merge_command(run, tmp_path / "x", dtype="fp32", dequantize=True)
    merge.merge_command(run, out, dtype="fp32", overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "config.json").is_file()


def test_cli_merge_and_card(tmp_path, tiny_model_dir):
    import subprocess
    import sys

    run = make_run(tmp_path, tiny_model_dir)
    cmd = [sys.executable, "-m", "finetune.cli"]
    done = subprocess.run([*cmd, "card", str(run)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (run / "README.md").is_file()
    done = subprocess.run(
        [*cmd, "merge", str(run), "--out", str(run)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2 and "run folder" in done.stderr


def test_failed_logit_check_exits_1_and_writes_nothing(tmp_path, tiny_model_dir, monkeypatch, capsys):
    """A merged model whose logits are off (here: its output layer doubled after merging) is not saved."""
    import sys

    from peft.tuners.tuners_utils import BaseTuner

    from finetune import cli

    run = make_run(tmp_path, tiny_model_dir)
    merge_and_unload = BaseTuner.merge_and_unload

    def broken(self, *args, **kwargs):
        merged = merge_and_unload(self, *args, **kwargs)
        with torch.no_grad():
            merged.get_output_embeddings().weight.mul_(2)
        return merged

    def merge_cli(*args) -> int:
        monkeypatch.setattr(sys, "argv", ["finetune", "merge", str(run), *map(str, args)])
        with pytest.raises(SystemExit) as done:
            cli.main()
        return done.value.code or 0

    out = tmp_path / "merged"
    monkeypatch.setattr(BaseTuner, "merge_and_unload", broken)
    for dtype in ("fp32", "bf16"):
        assert merge_cli("--out", out, "--dtype", dtype) == 1
        assert not out.exists()
        err = capsys.readouterr().err
        assert f"above the {dtype} tolerance" in err and "Traceback" not in err
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no temp folder left beside it either
    out.mkdir()  # --overwrite: the folder it would have replaced is kept as it was
    (out / "keep.txt").write_text("x")
    assert merge_cli("--out", out, "--dtype", "fp32", "--overwrite") == 1
    assert [p.name for p in out.iterdir()] == ["keep.txt"]

    monkeypatch.setattr(BaseTuner, "merge_and_unload", merge_and_unload)
    assert merge_cli("--out", out, "--dtype", "fp32", "--overwrite") == 0
    assert (out / "config.json").is_file() and not (out / "keep.txt").exists()
