"""load_tokenizer: special tokens, added tokens and the chat_template values axolotl configs use."""

from __future__ import annotations

import pytest

from finetune import config
from finetune.data.tokenizer import CHAT_TEMPLATES, load_tokenizer
from finetune.errors import UserError


def load(tiny_model_dir, **extra):
    raw = {"base_model": str(tiny_model_dir), "adapter": "lora", "datasets": [{"path": "org/data"}], **extra}
    return load_tokenizer(config.validate(raw))


def test_special_tokens_and_added_tokens(tiny_model_dir):
    tok = load(tiny_model_dir, special_tokens={"pad_token": "<|end_of_text|>"}, tokens=["<|ticker|>"])
    assert tok.pad_token == "<|end_of_text|>"
    assert len(tok("<|ticker|>", add_special_tokens=False)["input_ids"]) == 1


def test_default_keeps_the_tokenizer_template_and_names_replace_it(tiny_model_dir):
    own = load(tiny_model_dir).chat_template
    assert "{% generation %}" in own
    assert load(tiny_model_dir, chat_template="tokenizer_default").chat_template == own
    assert load(tiny_model_dir, chat_template="tokenizer_default_fallback_chatml").chat_template == own
    assert load(tiny_model_dir, chat_template="llama3").chat_template == CHAT_TEMPLATES["llama3"]
    jinja = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert load(tiny_model_dir, chat_template=jinja).chat_template == jinja
    assert load(tiny_model_dir, chat_template="jinja", chat_template_jinja=jinja).chat_template == jinja


def test_llama3_template_renders_one_bos(tiny_model_dir):
    tok = load(tiny_model_dir, chat_template="llama3")
    text = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert (
        text
        == "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"chat_template": "vicuna"},
            "chat_template: unknown template 'vicuna' (known: tokenizer_default, llama3, chatml, qwen_25, gemma, phi_3, jinja, or a Jinja string)",
        ),
        ({"chat_template": "jinja"}, "chat_template: jinja needs the template text in chat_template_jinja"),
        (
            {"chat_template": "chatml"},
            "chat_template: chatml ends each turn with <|im_end|>, which this tokenizer lacks, so the model could not "
            "learn to stop: add it with `tokens: [<|im_end|>]` (and its other markers), or use the model's own template",
        ),
    ],
)
def test_template_mistakes_are_one_line(tiny_model_dir, extra, message):
    with pytest.raises(UserError) as info:
        load(tiny_model_dir, **extra)
    assert info.value.problems == [message]


def test_eot_tokens_become_single_special_tokens(tiny_model_dir):
    tok = load(tiny_model_dir, eot_tokens=["<|turn_end|>"])
    assert len(tok("<|turn_end|>", add_special_tokens=False)["input_ids"]) == 1


def test_missing_tokenizer_is_one_line(tmp_path):
    with pytest.raises(UserError) as info:
        load(tmp_path)
    assert info.value.problems[0].startswith(f"base_model: cannot load a tokenizer from '{tmp_path}'")
