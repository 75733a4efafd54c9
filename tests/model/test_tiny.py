"""The tiny model loads through the same Auto* loaders a hub model does, with Llama 3 chat tokens."""

from __future__ import annotations

from finetune.model import tiny


def test_loads_with_auto_classes_and_runs(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert model.config.model_type == "llama"
    ids = tokenizer("Net revenue increased 12%", return_tensors="pt").input_ids
    assert ids[0, 0].item() == tokenizer.bos_token_id
    assert tokenizer.decode(ids[0], skip_special_tokens=True) == "Net revenue increased 12%"
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], len(tokenizer))


def test_special_tokens_and_chat_template(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert (
        tokenizer.bos_token == tiny.BOS
        and tokenizer.eos_token == tiny.EOT
        and tokenizer.pad_token == tiny.PAD
    )
    for token in tiny.SPECIAL_TOKENS:
        assert tokenizer.convert_tokens_to_ids(token) != tokenizer.unk_token_id
        assert len(tokenizer.tokenize(token)) == 1
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}], tokenize=False
    )
    assert text == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello<|eot_id|>"
    )


def test_different_seed_gives_different_weights(tmp_path):
    a = tiny.write_tiny_model(tmp_path / "a", seed=1)
    b = tiny.write_tiny_model(tmp_path / "b", seed=2)
    assert (a / "model.safetensors").read_bytes() != (b / "model.safetensors").read_bytes()
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()
