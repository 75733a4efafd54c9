# ruff: noqa: E402
"""The model stage on the tiny model: 4/8/16-bit bases, LoRA variants, vocabulary growth, the CPU 4-bit trap."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
bnb = pytest.importorskip("bitsandbytes")

from finetune import (
    config,
    model,  # noqa: E402
)
from finetune.data.tokenizer import count_new_tokens, load_tokenizer  # noqa: E402
from finetune.errors import UserError  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
QA = ROOT / "examples" / "finance_qa.jsonl"

pytestmark = pytest.mark.usefixtures("one_thread")


def make_cfg(base, **over) -> config.Config:
    raw = {"base_model": str(base), "adapter": "lora", "datasets": [{"path": str(QA)}], "seed": 3, **over}
    return config.validate(raw)


def load(cfg):
    tok = load_tokenizer(cfg)
    return model.load(cfg, tok, count_new_tokens(cfg, tok)), tok


def batch(tok):
    return tok(
        ["Revenue grew 12% while margins held.", "What is liquidity?"], return_tensors="pt", padding=True
    )


def lora_grads(m, x) -> dict:
    m.train()
    m.zero_grad()
    m(**x, labels=x["input_ids"]).loss.backward()
    return {n: p.grad.detach().clone() for n, p in m.named_parameters() if p.requires_grad}


@pytest.mark.parametrize(
    ("settings", "quantization", "layer"),
    [
        ({"load_in_4bit": True, "adapter": "qlora"}, "4-bit", "Linear4bit"),
        ({"load_in_8bit": True}, "8-bit", "Linear8bitLt"),
        ({}, "32-bit", "Linear"),
    ],
)
def test_bases_train_only_the_adapter(tiny_model_dir, settings, quantization, layer):
    loaded, tok = load(make_cfg(tiny_model_dir, **settings))
    m = loaded.model
    assert loaded.quantization == quantization
    q_proj = m.base_model.model.model.layers[0].self_attn.q_proj
    assert type(q_proj.base_layer).__name__ == layer
    # default targets: q,k,v,o with r=8 on 2 layers (hidden 64, k/v out 32)
    assert loaded.trainable_params == 2 * 8 * ((64 + 64) + (64 + 32) * 2 + (64 + 64))
    assert loaded.trainable_params < loaded.total_params
    if quantization == "4-bit":  # QLoRA's recipe: NF4 with double quantization
        q = m.base_model.model.config.quantization_config
        assert q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_use_double_quant
    grads = lora_grads(m, batch(tok))
    assert grads and all("lora_" in n for n in grads)
    assert all(g.abs().sum() > 0 for n, g in grads.items() if "lora_B" in n)  # A's is 0 while B starts at 0


@pytest.mark.filterwarnings("ignore::UserWarning")  # bnb warns on purpose in the no-workaround half
def test_cpu_4bit_gradients_survive_evaluation(tiny_model_dir):
    """FACTS.md trap: an eval-mode forward repacks 4-bit weights and later LoRA gradients go wrong."""
    loaded, tok = load(make_cfg(tiny_model_dir, load_in_4bit=True, adapter="qlora", lora_target_linear=True))
    m, x = loaded.model, batch(tok)
    before = lora_grads(m, x)
    m.eval()
    with torch.no_grad():
        m(**x)
    after = lora_grads(m, x)
    assert all(torch.equal(before[n], after[n]) for n in before)

    from bitsandbytes.nn.modules import has_avx512bf16

    if has_avx512bf16():  # show the test has teeth: without the workaround the gradients change
        fresh, _ = load(make_cfg(tiny_model_dir, load_in_4bit=True, adapter="qlora", lora_target_linear=True))
        for mod in fresh.model.modules():
            if isinstance(mod, bnb.nn.Linear4bit):
                mod.support_avx512bf16_for_cpu = True
        g1 = lora_grads(fresh.model, x)
        fresh.model.eval()
        with torch.no_grad():
            fresh.model(**x)
        g2 = lora_grads(fresh.model, x)
        assert any(not torch.allclose(g1[n], g2[n]) for n in g1)


def test_all_linear_dora_and_rslora(tiny_model_dir):
    cfg = make_cfg(
        tiny_model_dir, load_in_4bit=True, adapter="qlora", lora_target_linear=True, peft_use_dora=True,
        peft_use_rslora=True, lora_r=4, lora_alpha=8,
    )  # fmt: skip
    loaded, tok = load(cfg)
    m = loaded.model
    wrapped = {n.split(".")[-1] for n, mod in m.named_modules() if hasattr(mod, "lora_A")}
    assert wrapped == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    layer = m.base_model.model.model.layers[0].mlp.down_proj
    assert "default" in layer.lora_magnitude_vector  # DoRA
    assert layer.scaling["default"] == pytest.approx(8 / math.sqrt(4))  # rsLoRA: alpha / sqrt(r)
    grads = lora_grads(m, batch(tok))
    assert any("lora_magnitude_vector" in n and g.abs().sum() > 0 for n, g in grads.items())


def test_peft_layers_to_transform_adapts_only_those_layers(tiny_model_dir):
    cfg = make_cfg(
        tiny_model_dir,
        load_in_4bit=True,
        adapter="qlora",
        lora_target_linear=True,
        peft_layers_to_transform=[1],
    )
    loaded, tok = load(cfg)
    wrapped = {n for n, mod in loaded.model.named_modules() if hasattr(mod, "lora_A")}
    assert {n.split(".layers.")[1].split(".")[0] for n in wrapped} == {"1"}  # layer 1 only ...
    assert {n.split(".")[-1] for n in wrapped} == {  # ... all its linear layers (all-linear, spelled out)
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"
    }  # fmt: skip
    assert lora_grads(loaded.model, batch(tok))
    layers = loaded.model.config.num_hidden_layers
    with pytest.raises(
        UserError, match=rf"peft_layers_to_transform: layer {layers} does not exist .* 0 to {layers - 1}\)"
    ):
        load(make_cfg(tiny_model_dir, peft_layers_to_transform=[0, layers]))


def test_model_config_overrides_and_non_amp_dtypes(tiny_model_dir):
    cfg = make_cfg(tiny_model_dir, model_config={"rms_norm_eps": 0.001}, bfloat16=True)
    assert model.precision(cfg).dtype == "bfloat16" and not model.precision(cfg).bf16  # held in bf16, no AMP
    loaded, tok = load(cfg)
    base = loaded.model.base_model.model
    assert base.config.rms_norm_eps == 0.001 and base.model.norm.variance_epsilon == 0.001
    assert base.model.layers[0].self_attn.q_proj.base_layer.weight.dtype == torch.bfloat16
    grads = lora_grads(loaded.model, batch(tok))  # trains: fp32 adapter on a bf16 base, on CPU
    assert all(g.dtype == torch.float32 for g in grads.values()) and any(
        g.abs().sum() > 0 for g in grads.values()
    )
    assert model.precision(make_cfg(tiny_model_dir, float16=True)).dtype == "float16"
    with pytest.raises(
        UserError, match=r"overrides_of_model_config.rms_norm_epsilon: not a setting of .*LlamaConfig"
    ):
        model.load_model_config(make_cfg(tiny_model_dir, model_config={"rms_norm_epsilon": 0.1}))


def test_bnb_4bit_keys_shape_the_quantization(tiny_model_dir):
    fp32 = model.Precision(bf16=False, fp16=False, tf32=None, dtype="float32")
    q = model.quantization_config(make_cfg(tiny_model_dir, load_in_4bit=True), fp32)
    assert (q.bnb_4bit_quant_type, q.bnb_4bit_use_double_quant, q.bnb_4bit_compute_dtype) == (
        "nf4", True, torch.float32
    )  # fmt: skip
    cfg = make_cfg(
        tiny_model_dir, load_in_4bit=True, bnb_4bit_quant_type="fp4", bnb_4bit_use_double_quant=False,
        bnb_4bit_compute_dtype="bfloat16",
    )  # fmt: skip
    q = model.quantization_config(cfg, fp32)
    assert (q.bnb_4bit_quant_type, q.bnb_4bit_use_double_quant, q.bnb_4bit_compute_dtype) == (
        "fp4", False, torch.bfloat16
    )  # fmt: skip
    loaded, tok = load(cfg)
    layer = loaded.model.base_model.model.model.layers[0].self_attn.q_proj.base_layer
    assert layer.weight.quant_type == "fp4" and layer.compute_dtype == torch.bfloat16
    assert lora_grads(loaded.model, batch(tok))
    loaded, _ = load(make_cfg(tiny_model_dir, load_in_8bit=True, bnb_4bit_compute_dtype="bfloat16"))
    assert "bnb_4bit_compute_dtype: no effect without load_in_4bit" in loaded.notes


def test_xformers_flag_runs_sdpa_and_lora_init_is_configurable(tiny_model_dir):
    loaded, tok = load(make_cfg(tiny_model_dir, xformers_attention=True, peft_init_lora_weights=False))
    assert loaded.model.config._attn_implementation == "sdpa"
    assert any(
        note.startswith("xformers_attention: transformers has no xformers kernel") for note in loaded.notes
    )
    b = loaded.model.base_model.model.model.layers[0].self_attn.q_proj.lora_B["default"].weight
    assert b.abs().sum() > 0  # init false: B random too, so the adapter changes the output from the start
    fresh, _ = load(make_cfg(tiny_model_dir))
    assert (
        fresh.model.base_model.model.model.layers[0].self_attn.q_proj.lora_B["default"].weight.abs().sum()
        == 0
    )


def test_lora_model_dir_starts_from_the_saved_adapter(tiny_model_dir, tmp_path):
    first, _ = load(make_cfg(tiny_model_dir, lora_r=4))
    with torch.no_grad():
        for n, p in first.model.named_parameters():
            if "lora_B" in n:
                p.normal_()
    first.model.save_pretrained(tmp_path / "adapter")
    saved = {n: p.detach().clone() for n, p in first.model.named_parameters() if "lora_" in n}

    loaded, tok = load(make_cfg(tiny_model_dir, lora_model_dir=str(tmp_path / "adapter"), lora_r=16))
    now = {n: p for n, p in loaded.model.named_parameters() if "lora_" in n}
    assert now.keys() == saved.keys()
    assert all(torch.equal(now[n].detach(), saved[n]) for n in saved)
    assert all(p.requires_grad for p in now.values())
    assert any("continuing from" in note for note in loaded.notes)


def test_prequantized_checkpoint_loads_as_it_is(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, quantization_config=q)
    base.save_pretrained(tmp_path / "bnb-4bit")
    load_tokenizer(make_cfg(tiny_model_dir)).save_pretrained(tmp_path / "bnb-4bit")

    loaded, tok = load(make_cfg(tmp_path / "bnb-4bit"))  # no load_in_4bit: the checkpoint says so itself
    assert loaded.quantization == "4-bit"
    assert any("pre-quantized" in note for note in loaded.notes)
    x = batch(tok)
    model.disable_cpu_bf16_repack(base)  # compare like with like: the repacked CPU kernel computes in bf16
    with torch.no_grad(), loaded.model.disable_adapter():
        assert torch.allclose(loaded.model(**x).logits, base(**x).logits, atol=1e-5)


def test_new_tokens_resize_and_train_embeddings(tiny_model_dir):
    loaded, tok = load(make_cfg(tiny_model_dir, tokens=["<|fin_q|>", "<|fin_a|>"]))
    m = loaded.model
    assert m.get_input_embeddings().num_embeddings == len(tok)
    assert set(m.peft_config["default"].modules_to_save) >= {"embed_tokens", "lm_head"}
    assert any("embed_tokens and lm_head are trained in full" in note for note in loaded.notes)
    grads = lora_grads(m, tok(["<|fin_q|> revenue <|fin_a|> up"], return_tensors="pt"))
    assert any("embed_tokens" in n for n in grads)


def test_new_tokens_for_a_named_chat_template_that_needs_them(tiny_model_dir):
    # chatml's <|im_end|> is not in the base vocabulary: counting new tokens must not re-check the template
    loaded, tok = load(
        make_cfg(tiny_model_dir, chat_template="chatml", tokens=["<|im_start|>", "<|im_end|>"])
    )
    assert loaded.model.get_input_embeddings().num_embeddings == len(tok)
    assert set(loaded.model.peft_config["default"].modules_to_save) >= {"embed_tokens", "lm_head"}


def test_no_new_tokens_means_no_trained_embeddings(tiny_model_dir):
    loaded, _ = load(make_cfg(tiny_model_dir, special_tokens={"pad_token": "<|end_of_text|>"}))
    assert not loaded.model.peft_config["default"].modules_to_save
    assert loaded.model.base_model.model.config.pad_token_id is not None


def test_gradient_checkpointing_and_attention_fallback(tiny_model_dir):
    loaded, tok = load(make_cfg(tiny_model_dir, gradient_checkpointing=True, flash_attention=True))
    base = loaded.model.base_model.model
    assert base.is_activation_checkpointing
    assert base.config._attn_implementation == "sdpa"
    assert any("using sdpa instead" in note for note in loaded.notes)
    assert lora_grads(loaded.model, batch(tok))


def test_precision_on_cpu(tiny_model_dir):
    if torch.cuda.is_available():
        pytest.skip("CPU-only expectations")
    assert model.precision(make_cfg(tiny_model_dir)).dtype == "float32"  # bf16: auto stays fp32 on CPU
    assert model.precision(make_cfg(tiny_model_dir, bf16=True)).bf16
    with pytest.raises(UserError, match="fp16"):
        model.precision(make_cfg(tiny_model_dir, bf16=False, fp16=True))


def test_unknown_base_model_is_a_user_error(tmp_path):
    empty = tmp_path / "no-model"
    empty.mkdir()
    with pytest.raises(UserError, match="base_model"):
        model.load(make_cfg(empty), tokenizer=None, new_tokens=0)


def test_tiny_models_train_on_one_cpu_thread(tiny_model_dir, monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("CPU behaviour")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    torch.set_num_threads(2)
    loaded, _ = load(make_cfg(tiny_model_dir))
    assert torch.get_num_threads() == 1
    assert any("one thread" in note for note in loaded.notes)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    torch.set_num_threads(2)
    load(make_cfg(tiny_model_dir))
    assert torch.get_num_threads() == 2  # the user's choice wins


def test_adapter_init_follows_the_seed(tiny_model_dir):
    def lora_a(seed):
        loaded, _ = load(make_cfg(tiny_model_dir, seed=seed))
        return {n: p.detach().clone() for n, p in loaded.model.named_parameters() if "lora_A" in n}

    first, again, other = lora_a(1), lora_a(1), lora_a(2)
    assert all(torch.equal(first[n], again[n]) for n in first)
    assert any(not torch.equal(first[n], other[n]) for n in first)


HEAP_PROBE = """
import ctypes, sys, torch
from finetune.model import compute

class MallInfo2(ctypes.Structure):  # glibc >= 2.33, malloc.h
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] != "default":
    assert compute.cpu_heap(compact=sys.argv[1] == "compact")
blocks = [torch.ones(4 << 20) for _ in range(10)]  # 10 live activations of 16 MiB
mapped = libc.mallinfo2().hblkhd
del blocks
print(mapped >> 20, libc.mallinfo2().fordblks >> 20)  # MiB in their own mmaps; MiB freed but kept in the heap
"""


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="glibc heap behaviour: Linux only")
def test_cpu_heap_fast_keeps_activations_in_the_heap_and_compact_gives_them_back():
    """glibc's default (threshold 128 KiB until a block is freed) maps each 16 MiB activation on its own and
    unmaps it when freed: fresh pages to fault in next step. The fast heap serves them from the heap and keeps
    the freed space; the compact heap maps them (returned to the OS at once)."""
    import subprocess
    import sys

    def probe(mode: str) -> tuple[int, int]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
        out = subprocess.run([sys.executable, "-c", HEAP_PROBE, mode], capture_output=True, text=True,
                             env=env, check=True)  # fmt: skip
        mapped, kept = out.stdout.split()
        return int(mapped), int(kept)

    assert probe("default")[0] >= 160  # what the fast heap is for (fails if glibc's defaults change)
    mapped, kept = probe("fast")
    assert mapped < 16 and kept >= 160
    mapped, kept = probe("compact")
    assert mapped >= 160 and kept < 16
