"""Prompt formats on the tiny tokenizer: exactly which tokens are trained, for each `type:`."""

from __future__ import annotations

import pytest

from conftest import FINLORA_INST as INST
from finetune import config
from finetune.data import formats
from finetune.data.formats import IGNORE
from finetune.data.tokenizer import load_tokenizer
from finetune.errors import UserError

BOS, EOT = "<|begin_of_text|>", "<|eot_id|>"


def cfg_for(tiny_model_dir, dataset: dict, **extra):
    raw = {
        "base_model": str(tiny_model_dir),
        "adapter": "lora",
        "datasets": [{"path": "org/data", **dataset}],
        **extra,
    }
    return config.validate(raw)


def encode(cfg, rows: list[dict], tokenizer=None):
    tokenizer = tokenizer or load_tokenizer(cfg)
    fmt = formats.build_format(cfg, cfg.datasets[0], "datasets[0]", tokenizer)
    columns = {key: [row.get(key) for row in rows] for key in {k for row in rows for k in row}}
    return formats.encode_batch(fmt, tokenizer, columns), tokenizer


def decoded(tokenizer, out, i, trained=True) -> str:
    pairs = zip(out["input_ids"][i], out["labels"][i], strict=True)
    return tokenizer.decode(
        [t for t, label in pairs if (label != IGNORE) == trained], skip_special_tokens=False
    )


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return load_tokenizer(cfg_for(tiny_model_dir, {}))


def test_custom_dict_masks_prompt_and_trains_answer_plus_eos(tiny_model_dir, tok):
    cfg = cfg_for(tiny_model_dir, {"type": INST})
    rows = [
        {"context": "Sentiment of: shares fell .", "target": "negative"},
        {"context": "x", "target": " 21462.58"},
    ]
    out, _ = encode(cfg, rows, tok)
    for i, row in enumerate(rows):
        assert decoded(tok, out, i) == row["target"] + EOT
        assert decoded(tok, out, i, trained=False) == f"{BOS}[INST] {row['context']} [/INST]"
        assert out["status"][i] == formats.OK and out["trained"][i] == sum(
            1 for t in out["labels"][i] if t != IGNORE
        )
    # the answer is tokenized on its own, after the prompt (axolotl's layout): no merge across the boundary
    answer = tok("negative", add_special_tokens=False)["input_ids"]
    assert out["input_ids"][0][-len(answer) - 1 :] == [*answer, tok.eos_token_id]


def test_custom_dict_system_input_and_no_input_formats(tiny_model_dir, tok):
    fields = {
        "field_instruction": "q",
        "field_input": "ctx",
        "field_output": "a",
        "field_system": "sys",
        "format": "Q: {instruction}\nC: {input}\nA:",
        "no_input_format": "Q: {instruction}\nA:",
        "system_format": "<<{system}>>\n",
    }
    cfg = cfg_for(tiny_model_dir, {"type": fields})
    rows = [{"q": "one", "ctx": "two", "a": "yes", "sys": "be brief"}, {"q": "one", "a": "no"}]
    out, _ = encode(cfg, rows, tok)
    assert decoded(tok, out, 0, trained=False) == f"{BOS}<<be brief>>\nQ: one\nC: two\nA:"
    assert decoded(tok, out, 1, trained=False) == f"{BOS}Q: one\nA:"
    assert decoded(tok, out, 1) == "no" + EOT


def test_custom_system_prompt_used_only_without_field_system(tiny_model_dir, tok):
    fields = {
        "field_instruction": "q",
        "field_output": "a",
        "system_prompt": "SYS",
        "format": "{instruction}:",
    }
    out, _ = encode(cfg_for(tiny_model_dir, {"type": fields}), [{"q": "hi", "a": "yo"}], tok)
    assert decoded(tok, out, 0, trained=False) == f"{BOS}SYShi:"  # system_format defaults to "{system}"
    fields["field_system"] = "sys"  # axolotl: with field_system set, system_prompt is ignored
    out, _ = encode(cfg_for(tiny_model_dir, {"type": fields}), [{"q": "hi", "a": "yo"}], tok)
    assert decoded(tok, out, 0, trained=False) == f"{BOS}hi:"


def test_alpaca_with_and_without_input(tiny_model_dir, tok):
    rows = [
        {"instruction": "Classify.", "input": "Shares rose.", "output": "positive"},
        {"instruction": "Say hi.", "output": "hi"},
    ]
    out, _ = encode(cfg_for(tiny_model_dir, {"type": "alpaca"}), rows, tok)
    assert decoded(tok, out, 0, trained=False) == (
        f"{BOS}{formats.ALPACA_SYSTEM}\n\n### Instruction:\nClassify.\n\n### Input:\nShares rose.\n\n### Response:\n"
    )
    assert decoded(tok, out, 1, trained=False) == (
        f"{BOS}{formats.ALPACA_SYSTEM_NO_INPUT}\n\n### Instruction:\nSay hi.\n\n### Response:\n"
    )
    assert [decoded(tok, out, i) for i in (0, 1)] == ["positive" + EOT, "hi" + EOT]


@pytest.mark.parametrize("name", ["alpaca:chat", "alpaca_chat"])
def test_alpaca_chat_style_is_axolotls_layout(tiny_model_dir, tok, name):
    rows = [
        {"instruction": "Classify.", "input": "Shares rose.", "output": "positive"},
        {"instruction": "Say hi.", "output": "hi"},
    ]
    cfg = cfg_for(tiny_model_dir, {"type": name})
    assert cfg.datasets[0].type == "alpaca:chat"
    out, _ = encode(cfg, rows, tok)
    assert decoded(tok, out, 0, trained=False) == (
        f"{BOS}SYSTEM: {formats.ALPACA_SYSTEM}\nUSER: Classify.\nShares rose.\nASSISTANT:"
    )
    assert (
        decoded(tok, out, 1, trained=False)
        == f"{BOS}SYSTEM: {formats.ALPACA_SYSTEM_NO_INPUT}\nUSER: Say hi.\nASSISTANT:"
    )
    assert [decoded(tok, out, i) for i in (0, 1)] == ["positive" + EOT, "hi" + EOT]
    out, _ = encode(cfg_for(tiny_model_dir, {"type": "alpaca:chatml"}), rows[1:], tok)
    assert decoded(tok, out, 0, trained=False) == (
        f"{BOS}<|im_start|>system\n{formats.ALPACA_SYSTEM_NO_INPUT}<|im_end|>\n<|im_start|>user\nSay hi.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert cfg_for(tiny_model_dir, {"type": "alpaca:instruct"}).datasets[0].type == "alpaca"


def test_completion_trains_the_text_plus_eos(tiny_model_dir, tok):
    out, _ = encode(
        cfg_for(tiny_model_dir, {"type": "completion", "field": "body"}), [{"body": "Revenue grew 5%."}], tok
    )
    assert decoded(tok, out, 0) == "Revenue grew 5%." + EOT
    assert decoded(tok, out, 0, trained=False) == BOS


def test_train_on_inputs_trains_every_token(tiny_model_dir, tok):
    cfg = cfg_for(tiny_model_dir, {"type": INST}, train_on_inputs=True)
    out, _ = encode(cfg, [{"context": "q?", "target": "a"}], tok)
    assert out["labels"][0] == out["input_ids"][0]


def test_empty_answers_and_bad_values_are_flagged_per_row(tiny_model_dir, tok):
    rows = [
        {"context": "q", "target": "  "},
        {"context": "q"},
        {"context": "q", "target": 5},
        {"context": ["q"], "target": "a"},
    ]
    out, _ = encode(cfg_for(tiny_model_dir, {"type": INST}), rows, tok)
    assert out["status"] == [formats.EMPTY, formats.ERROR, formats.ERROR, formats.ERROR]
    assert out["error"][1:] == [
        "missing field 'target'",
        "field 'target': expected a string, got int '5'",
        "field 'context': expected a string, got list \"['q']\"",
    ]


def test_bad_custom_format_is_one_line(tiny_model_dir, tok):
    cfg = cfg_for(tiny_model_dir, {"type": {**INST, "format": "[INST] {question} [/INST]"}})
    with pytest.raises(UserError) as info:
        formats.build_format(cfg, cfg.datasets[0], "datasets[0]", tok)
    assert info.value.problems == [
        "datasets[0].type.format: bad template '[INST] {question} [/INST]' (KeyError: 'question'); "
        "use {instruction}, {input} and {system}, and double literal braces"
    ]


def test_truncate_keeps_sequence_len_tokens(tiny_model_dir, tok):
    cfg = cfg_for(tiny_model_dir, {"type": INST}, sequence_len=8, excess_length_strategy="truncate")
    out, _ = encode(cfg, [{"context": "a long question about net present value", "target": "yes"}], tok)
    assert len(out["input_ids"][0]) == 8 and out["truncated"] == [True] and out["trained"] == [0]


def test_input_output_segments_train_the_labelled_texts(tiny_model_dir, tok):
    rows = [
        {"segments": [
            {"label": False, "text": "<s>Question: what is ROE?"}, {"label": True, "text": " Return on equity.</s>"},
            {"label": False, "text": " Next:"}, {"label": True, "text": " done"},
        ]},
        {"segments": [{"label": False, "text": "only a prompt"}]},
        {"segments": "not a list"},
        {"segments": [{"text": "no label"}]},
    ]  # fmt: skip
    cfg = cfg_for(tiny_model_dir, {"type": "input_output"})
    out, _ = encode(cfg, rows, tok)
    texts = [s["text"] for s in rows[0]["segments"]]
    pieces = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    assert out["input_ids"][0] == [t for p in pieces for t in p]  # joined as they are: no BOS/EOS added
    assert out["labels"][0] == [IGNORE] * len(pieces[0]) + pieces[1] + [IGNORE] * len(pieces[2]) + pieces[3]
    assert out["status"][:2] == [formats.OK, formats.EMPTY]  # nothing labelled: nothing to train
    assert out["error"][2] == "field 'segments': expected a list of {text, label} segments, got 'not a list'"
    assert (
        out["error"][3]
        == "field 'segments[0]': expected {text: string, label: true/false}, got \"{'text': 'no label'}\""
    )
    out, _ = encode(cfg_for(tiny_model_dir, {"type": "input_output"}, train_on_inputs=True), rows[:1], tok)
    assert out["labels"][0] == out["input_ids"][0]


@pytest.mark.parametrize("train_on_inputs", [False, True])
@pytest.mark.parametrize("strategy", ["drop", "truncate"])
def test_text_rows_built_in_numpy_equal_encode_batch(tiny_model_dir, train_on_inputs, strategy):
    """encode.py builds text-format batches in numpy (100k rows: no per-row lists): the same ids, labels,
    counts, statuses and truncation as formats.encode_batch, row for row (empty answers, bad rows, long rows)."""
    import pyarrow as pa

    from finetune.data import encode as encode_stage

    cfg = cfg_for(tiny_model_dir, {"type": INST}, sequence_len=24, train_on_inputs=train_on_inputs,
                  excess_length_strategy=strategy)  # fmt: skip
    rows = [{"context": "What is ROE?", "target": "Net income over equity."},
            {"context": "long " * 30, "target": "cut"}, {"context": "q", "target": "   "},
            {"context": "q", "target": 7}, {"context": "short", "target": "answer " * 40}, {"context": "", "target": "x"}]  # fmt: skip
    tokenizer = load_tokenizer(cfg)
    fmt = formats.build_format(cfg, cfg.datasets[0], "datasets[0]", tokenizer)
    columns = {"context": [r["context"] for r in rows], "target": [r["target"] for r in rows]}
    lists = pa.RecordBatch.from_pydict(
        formats.encode_batch(fmt, tokenizer, columns), schema=encode_stage._schema()
    )
    built = encode_stage._encode_to_arrow(fmt, tokenizer, columns)
    assert built.to_pylist() == lists.to_pylist()
    assert [r["status"] for r in built.to_pylist()] == [0, 0, 1, 2, 0, 0]
    assert any(r["truncated"] for r in built.to_pylist()) == (strategy == "truncate")
