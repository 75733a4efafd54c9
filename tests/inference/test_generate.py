"""`finetune generate`: prompts token-identical to training in every format, streaming, stopping, merged
folders, --chat."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import INST_FORMAT, SENTIMENT_PROMPT, sentiment_rows
from finetune import config
from finetune.data import answer_format, formats
from finetune.data.formats import IGNORE
from finetune.errors import UserError
from finetune.inference import evaluate, generate
from finetune.model import generation
from finetune.outputs import run_dir

SYSTEM = "You are a concise financial analyst."
QUESTION = "Answer the question briefly. Question: What is liquidity?"
ANSWER = "How quickly an asset can be turned into cash without losing value."


def saved_tokenizer(cfg, folder: Path):
    """The tokenizer as a run saves it in output_dir (train.py: load_tokenizer -> save_pretrained), reloaded."""
    from transformers import AutoTokenizer

    from finetune.data.tokenizer import load_tokenizer

    load_tokenizer(cfg).save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def training_prompt(cfg, row: dict) -> list[int]:
    """What training fed the model before the (last) answer: the tokens before its first trained label."""
    from finetune.data.tokenizer import load_tokenizer

    tok = load_tokenizer(cfg)
    fmt = formats.build_format(cfg, cfg.datasets[0], "datasets[0]", tok)
    out = formats.encode_batch(fmt, tok, {k: [v] for k, v in row.items()})
    ids, labels = out["input_ids"][0], out["labels"][0]
    starts = [i for i, label in enumerate(labels) if label != IGNORE and (i == 0 or labels[i - 1] == IGNORE)]
    return ids[: starts[-1]]


def chat_row(system: str | None = SYSTEM) -> dict:
    turns = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": ANSWER},
    ]
    return {"messages": turns}


# (dataset type, extra config keys, a training row, generate's question/system for the same prompt)
CASES = {
    "custom": (INST_FORMAT, {}, {"context": QUESTION, "target": ANSWER}, (QUESTION, None)),
    "custom_field_system": (
        {**INST_FORMAT, "field_system": "system", "system_format": "<<SYS>>{system}<</SYS>> "},
        {},
        {"system": SYSTEM, "context": QUESTION, "target": ANSWER},
        (QUESTION, SYSTEM),
    ),
    "alpaca": ("alpaca", {}, {"instruction": QUESTION, "output": ANSWER}, (QUESTION, None)),
    "chat_tokenizer_template": ("chat_template", {}, chat_row(), (QUESTION, SYSTEM)),
    "chat_llama3_no_system": ("chat_template", {"chat_template": "llama3"}, chat_row(None), (QUESTION, None)),
}


def make_cfg(tmp_path: Path, base: Path, kind, extra: dict) -> config.Config:
    data = tmp_path / "rows.jsonl"
    data.write_text("{}\n")
    raw = {
        "base_model": str(base),
        "adapter": "lora",
        "datasets": [{"path": str(data), "type": kind}],
        **extra,
    }
    return config.validate(raw)


@pytest.mark.parametrize("case", CASES)
def test_prompts_are_token_identical_to_training(case, tmp_path, tiny_model_dir):
    kind, extra, row, (question, system) = CASES[case]
    cfg = make_cfg(tmp_path, tiny_model_dir, kind, extra)
    expected = training_prompt(cfg, row)
    tok = saved_tokenizer(cfg, tmp_path / "out")
    ds = cfg.datasets[0]
    # generate: the user's question (and system text) laid out in the training format
    assert generate.question_prompt(cfg, ds, tok, question, system) == expected
    # eval: the row itself, read in the training data's layout
    loaded = generate.Loaded(None, tok, run_dir.Run(tmp_path, cfg, ""), "adapter")
    [example] = evaluate.examples(loaded, [(1, row)], tmp_path / "rows.jsonl", None, None)
    assert example.prompt == expected
    assert example.target == ANSWER and example.input == QUESTION


def test_system_text_without_a_system_field_uses_system_prompt(tmp_path, tiny_model_dir):
    """--system on a custom format without field_system = training with that system_prompt."""
    with_system = make_cfg(tmp_path, tiny_model_dir, {**INST_FORMAT, "system_prompt": SYSTEM + " "}, {})
    expected = training_prompt(with_system, {"context": QUESTION, "target": ANSWER})
    plain = make_cfg(tmp_path, tiny_model_dir, INST_FORMAT, {})
    tok = saved_tokenizer(plain, tmp_path / "out")
    assert generate.question_prompt(plain, plain.datasets[0], tok, QUESTION, SYSTEM + " ") == expected
    assert generate.question_prompt(with_system, with_system.datasets[0], tok, QUESTION) == expected


def test_completion_prompt_is_a_prefix_of_the_training_tokens(tmp_path, tiny_model_dir):
    """completion trains on BOS + raw text: the prompt is BOS + the text so far, as the training tokens begin."""
    from finetune.data.tokenizer import load_tokenizer

    cfg = make_cfg(tmp_path, tiny_model_dir, "completion", {})
    text = "Net income rose 12% in 2023 because sales grew in every region."
    tok = load_tokenizer(cfg)
    fmt = formats.build_format(cfg, cfg.datasets[0], "datasets[0]", tok)
    trained = formats.encode_batch(fmt, tok, {"text": [text]})["input_ids"][0]
    prompt = generate.question_prompt(cfg, cfg.datasets[0], saved_tokenizer(cfg, tmp_path / "o"), text[:35])
    assert text[:35] == "Net income rose 12% in 2023 because"
    assert prompt == trained[: len(prompt)] and prompt[0] == tok.bos_token_id


def test_system_refused_where_training_had_none(tmp_path, tiny_model_dir):
    cfg = make_cfg(tmp_path, tiny_model_dir, "alpaca", {})
    tok = saved_tokenizer(cfg, tmp_path / "out")
    with pytest.raises(UserError, match="--system: this run's alpaca format has no system prompt"):
        generate.question_prompt(cfg, cfg.datasets[0], tok, QUESTION, SYSTEM)


def test_chat_history_is_in_the_prompt(tmp_path, tiny_model_dir):
    cfg = make_cfg(tmp_path, tiny_model_dir, "chat_template", {})
    tok = saved_tokenizer(cfg, tmp_path / "out")
    ids = generate.question_prompt(
        cfg, cfg.datasets[0], tok, "And ROE?", SYSTEM, [("user", QUESTION), ("assistant", ANSWER)]
    )
    row = {"messages": [*chat_row()["messages"], {"role": "user", "content": "And ROE?"}, {"role": "assistant", "content": "Return on equity."}]}  # fmt: skip
    assert ids == training_prompt(cfg, row)
    text = tok.decode(ids)
    assert text.index(SYSTEM) < text.index(QUESTION) < text.index(ANSWER) < text.index("And ROE?")


# ---------------------------------------------------------------- on the trained run


@pytest.fixture(scope="module")
def loaded(trained_run):
    return generate.load(trained_run)


@pytest.mark.slow
def test_answer_streams_and_stops(loaded):
    import torch

    assert loaded.what == "adapter" and type(loaded.model).__name__.startswith("PeftModel")
    assert any("Linear4bit" in type(m).__name__ for m in loaded.model.modules())  # 4-bit, as trained
    ids = generate.question_prompt(
        loaded.cfg, loaded.dataset, loaded.tokenizer, SENTIMENT_PROMPT.format("Nokia raised its dividend .")
    )
    pieces: list[str] = []
    text = generate.answer(loaded, ids, max_new_tokens=40, write=pieces.append)
    assert text and "".join(pieces).strip() == text
    stop = answer_format.stop_ids(loaded.cfg, loaded.dataset, loaded.tokenizer, loaded.model)
    assert loaded.tokenizer.eos_token_id in stop
    # the same greedy run, token by token: it ended on a stop token well before the limit
    with torch.no_grad():
        out = loaded.model.generate(
            input_ids=torch.tensor([ids]), max_new_tokens=40, do_sample=False, eos_token_id=stop
        )
    new = out[0, len(ids) :].tolist()
    assert new[-1] in stop and len(new) < 40
    assert generation.decode_answer(loaded.tokenizer, new, stop) == text


@pytest.mark.slow
def test_cli_generate_and_chat(trained_run):
    from typer.testing import CliRunner

    from finetune.cli import app

    question = SENTIMENT_PROMPT.format("HSBC posted a net loss .")
    one = CliRunner().invoke(app, ["generate", str(trained_run), question, "--max-new-tokens", "20"])
    assert one.exit_code == 0, one.output
    answer = one.output.strip().splitlines()[-1]
    assert answer
    session = CliRunner().invoke(app, ["generate", str(trained_run), "--chat"], input="Is HSBC up?\nexit\n")
    assert session.exit_code == 0, session.output
    assert "each question is answered on its own" in session.output and session.output.count(">>> ") == 2
    bad = CliRunner().invoke(app, ["generate", str(trained_run)])
    assert isinstance(bad.exception, UserError) and "give a question, or --chat" in str(bad.exception)


@pytest.mark.slow
def test_merged_folder_answers_like_the_adapter(trained_run, loaded, tmp_path):
    from finetune.outputs import merge

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    merge.merge_command(run, tmp_path / "merged", dtype="fp32", dequantize=True)
    merged = generate.load(tmp_path / "merged")
    assert merged.what == "merged" and yaml.safe_load((tmp_path / "merged" / "config.yml").read_text())
    for news in ("Nokia raised its dividend .", "Shell cut 2,000 jobs .", "HSBC is based in Helsinki ."):
        ids = generate.question_prompt(
            loaded.cfg, loaded.dataset, loaded.tokenizer, SENTIMENT_PROMPT.format(news)
        )
        assert (
            generate.question_prompt(
                merged.cfg, merged.dataset, merged.tokenizer, SENTIMENT_PROMPT.format(news)
            )
            == ids
        )
        assert generate.answer(merged, ids, 20) == generate.answer(loaded, ids, 20)
    # eval works on it too; its card (written by merge from the run's folder) is left alone
    data = tmp_path / "few.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in sentiment_rows(3)))
    card = (tmp_path / "merged" / "README.md").read_text()
    entry = evaluate.run(tmp_path / "merged", data)
    assert entry["model"] == "merged" and entry["examples"] == 3
    assert (tmp_path / "merged" / "README.md").read_text() == card


@pytest.mark.slow
def test_base_only_has_no_adapter(trained_run):
    base = generate.load(trained_run, base_only=True)
    assert base.what == "base" and not hasattr(base.model, "peft_config")


@pytest.mark.slow
def test_dataset_option_picks_the_format_of_another_entry(trained_run, tmp_path):
    """A run that mixed formats: --dataset N prompts in entry N's format, an index out of range is refused."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    saved = yaml.safe_load((run / "config.yml").read_text())
    saved["datasets"].append({**saved["datasets"][0], "type": "alpaca"})
    (run / "config.yml").write_text(yaml.safe_dump(saved))
    second = generate.load(run, dataset_index=1)
    assert second.dataset.type == "alpaca"
    ids = generate.question_prompt(second.cfg, second.dataset, second.tokenizer, "Is HSBC up?")
    assert "### Instruction:\nIs HSBC up?" in second.tokenizer.decode(ids)
    with pytest.raises(UserError, match=r"--dataset: 2 is not an entry of this run's datasets \(0 to 1\)"):
        generate.load(run, dataset_index=2)


def test_not_a_run_folder(tmp_path):
    with pytest.raises(UserError, match="no config.yml"):
        generate.load(tmp_path)
