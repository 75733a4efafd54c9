"""chat_template on the tiny tokenizer (Llama 3 specials): which turns and end-of-turn tokens are trained."""

from __future__ import annotations

import pytest
from test_formats import BOS, EOT, cfg_for, decoded, encode

from finetune.data import formats
from finetune.data.formats import IGNORE
from finetune.data.tokenizer import load_tokenizer

CHAT = [
    {"role": "system", "content": "You are a concise analyst."},
    {"role": "user", "content": "What is ROE?"},
    {"role": "assistant", "content": "Return on equity."},
    {"role": "user", "content": "And ROA?"},
    {"role": "assistant", "content": "Return on assets."},
]


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return load_tokenizer(cfg_for(tiny_model_dir, {}))


def test_train_on_inputs_trains_the_whole_conversation(tiny_model_dir, tok):
    out, _ = encode(
        cfg_for(tiny_model_dir, {"type": "chat_template"}, train_on_inputs=True), [{"messages": CHAT}], tok
    )
    assert out["labels"][0] == out["input_ids"][0]


def test_chat_trains_only_assistant_turns_and_their_end_of_turn(tiny_model_dir, tok):
    out, _ = encode(cfg_for(tiny_model_dir, {"type": "chat_template"}), [{"messages": CHAT}], tok)
    assert decoded(tok, out, 0) == f"Return on equity.{EOT}Return on assets.{EOT}"
    assert out["input_ids"][0].count(tok.bos_token_id) == 1  # the template's BOS, no second one
    # same labels as transformers' own assistant mask from the template's {% generation %} markers
    mask = tok.apply_chat_template(CHAT, return_dict=True, return_assistant_tokens_mask=True)[
        "assistant_masks"
    ]
    assert [label != IGNORE for label in out["labels"][0]] == [bool(m) for m in mask]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            {"roles_to_train": ["assistant", "user"]},
            f"What is ROE?{EOT}Return on equity.{EOT}And ROA?{EOT}Return on assets.{EOT}",
        ),
        ({"train_on_eos": "last"}, f"Return on equity.Return on assets.{EOT}"),
        ({"train_on_eos": "none"}, "Return on equity.Return on assets."),
        ({"train_on_eos": "all"}, f"{EOT}{EOT}Return on equity.{EOT}{EOT}Return on assets.{EOT}"),
    ],
)
def test_chat_roles_to_train_and_train_on_eos(tiny_model_dir, tok, extra, expected):
    out, _ = encode(cfg_for(tiny_model_dir, {"type": "chat_template", **extra}), [{"messages": CHAT}], tok)
    assert decoded(tok, out, 0) == expected


def test_chat_sharegpt_mapping_and_dropped_system(tiny_model_dir, tok):
    turns = [
        {"from": "system", "value": "S"},
        {"from": "human", "value": "Hi?"},
        {"from": "gpt", "value": "Hello."},
    ]
    dataset = {
        "type": "chat_template",
        "field_messages": "conversations",
        "drop_system_message": True,
        "message_property_mappings": {"role": "from", "content": "value"},
    }
    out, _ = encode(cfg_for(tiny_model_dir, dataset), [{"conversations": turns}], tok)
    assert decoded(tok, out, 0) == f"Hello.{EOT}"
    assert decoded(tok, out, 0, trained=False) == (
        f"{BOS}<|start_header_id|>user<|end_header_id|>\n\nHi?{EOT}<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_chat_rows_without_assistant_content_are_empty_and_bad_turns_named(tiny_model_dir, tok):
    rows = [
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""}]},
        {"messages": [{"role": "user", "content": None}]},
        {"messages": "hello"},
    ]
    out, _ = encode(cfg_for(tiny_model_dir, {"type": "chat_template"}), rows, tok)
    assert out["status"] == [formats.EMPTY, formats.ERROR, formats.ERROR]
    assert out["error"][1:] == [
        "missing field 'messages[0].content'",
        "field 'messages': expected a list of messages, got str",
    ]


def test_named_templates_llama3_chatml_and_jinja(tiny_model_dir, tok):
    out, llama = encode(
        cfg_for(tiny_model_dir, {"type": "chat_template"}, chat_template="llama3"), [{"messages": CHAT}]
    )
    assert decoded(llama, out, 0) == f"Return on equity.{EOT}Return on assets.{EOT}"
    assert out["input_ids"][0].count(llama.bos_token_id) == 1

    cfg = cfg_for(
        tiny_model_dir,
        {"type": "chat_template"},
        chat_template="chatml",
        tokens=["<|im_start|>", "<|im_end|>"],
    )
    out, chatml = encode(cfg, [{"messages": CHAT}])
    assert decoded(chatml, out, 0) == "Return on equity.<|im_end|>Return on assets.<|im_end|>"
    assert decoded(chatml, out, 0, trained=False).startswith(
        "<|im_start|>system\nYou are"
    )  # chatml has no BOS

    jinja = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}<|end_of_text|>{% endfor %}"
    cfg = cfg_for(
        tiny_model_dir, {"type": "chat_template"}, chat_template=jinja, eot_tokens=["<|end_of_text|>"]
    )
    out, plain = encode(cfg, [{"messages": CHAT[1:3]}])
    # a token that straddles the boundary (" Return": the template's space + the content) is trained
    assert decoded(plain, out, 0) == " Return on equity.<|end_of_text|>"
    assert decoded(plain, out, 0, trained=False) == "user: What is ROE?<|end_of_text|>assistant:"


def test_per_dataset_template_overrides_the_tokenizer_one(tiny_model_dir, tok):
    cfg = cfg_for(tiny_model_dir, {"type": "chat_template", "chat_template": "llama3"})
    fmt = formats.build_format(cfg, cfg.datasets[0], "datasets[0]", tok)
    assert "loop_messages" in fmt.spec.template


@pytest.mark.parametrize("template", ["llama3", "tokenizer_default"])
@pytest.mark.parametrize("answer", ["art", "id", "t", "a", "header", "<|"])
def test_an_answer_that_occurs_in_the_markup_is_trained_not_the_markup(tiny_model_dir, tok, template, answer):
    # the old text search found "art" in <|start_header_id|>: the header was trained and the answer masked
    turns = [{"role": "user", "content": answer}, {"role": "assistant", "content": answer}]
    cfg = cfg_for(tiny_model_dir, {"type": "chat_template", "chat_template": template})
    out, _ = encode(cfg, [{"messages": turns}], tok)
    assert decoded(tok, out, 0) == f"{answer}{EOT}"
    markup = {tok.convert_tokens_to_ids(t) for t in (BOS, "<|start_header_id|>", "<|end_header_id|>")}
    assert not markup & {label for label in out["labels"][0] if label != IGNORE}
    # the trained tokens are the conversation's last ones (the answer), not the user's identical text
    trained = [label != IGNORE for label in out["labels"][0]]
    assert trained == sorted(trained)


def test_an_answer_with_outer_whitespace_trains_it_as_rendered_and_the_end_of_turn(tiny_model_dir):
    turns = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": " Hello. "}]
    cfg = cfg_for(
        tiny_model_dir,
        {"type": "chat_template"},
        chat_template="chatml",
        tokens=["<|im_start|>", "<|im_end|>"],
    )
    out, chatml = encode(cfg, [{"messages": turns}])
    assert decoded(chatml, out, 0) == " Hello. <|im_end|>"  # chatml inserts the content as it is
    out, llama = encode(
        cfg_for(tiny_model_dir, {"type": "chat_template"}, chat_template="llama3"), [{"messages": turns}]
    )
    assert decoded(llama, out, 0) == f"Hello.{EOT}"  # llama3 trims it


def test_a_default_system_prompt_of_the_template_is_not_trained(tiny_model_dir):
    cfg = cfg_for(
        tiny_model_dir,
        {"type": "chat_template"},
        chat_template="qwen_25",
        tokens=["<|im_start|>", "<|im_end|>"],
    )
    out, qwen = encode(cfg, [{"messages": CHAT[1:]}])
    assert decoded(qwen, out, 0) == "Return on equity.<|im_end|>Return on assets.<|im_end|>"
    assert decoded(qwen, out, 0, trained=False).startswith("<|im_start|>system\nYou are Qwen")


def test_a_template_that_changes_the_content_trains_it_as_rendered(tiny_model_dir):
    jinja = "{% for m in messages %}{{ m['role'] }}:\n{{ m['content'] | upper }}<|end_of_text|>{% endfor %}"
    cfg = cfg_for(
        tiny_model_dir, {"type": "chat_template"}, chat_template=jinja, eot_tokens=["<|end_of_text|>"]
    )
    out, plain = encode(cfg, [{"messages": CHAT[1:3]}])
    assert decoded(plain, out, 0) == "RETURN ON EQUITY.<|end_of_text|>"


def test_a_template_whose_markup_depends_on_the_content_is_a_row_error(tiny_model_dir):
    # like reasoning templates: the text around the answer changes when it holds </think>
    jinja = (
        "{% for m in messages %}{{ m['role'] }}:\n{% if '</think>' in m['content'] %}"
        "<think>{{ m['content'].split('</think>')[0] }}</think>{{ m['content'].split('</think>')[1] }}"
        "{% else %}<think></think>{{ m['content'] }}{% endif %}<|end_of_text|>{% endfor %}"
    )
    cfg = cfg_for(
        tiny_model_dir, {"type": "chat_template"}, chat_template=jinja, eot_tokens=["<|end_of_text|>"]
    )
    rows = [
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]},
        {
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "hm</think>Hello."},
            ]
        },
    ]
    out, plain = encode(cfg, rows)
    assert decoded(plain, out, 0) == "Hello.<|end_of_text|>"
    assert out["status"] == [formats.OK, formats.ERROR]
    assert out["error"][1] == (
        "field 'messages[1]': the chat template's text around this turn changes with its content "
        "(it rewrites the content), so the turn cannot be located to train it"
    )
