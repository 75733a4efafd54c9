"""Preference data (preference.py, preference_data.py) and the preference config keys: formats, token layout,
bad rows by file:line, length rules, the cache, and the one-line refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import ROOT
from finetune import config, data
from finetune.data import preference as preference_data
from finetune.data import preference_format as preference
from finetune.data.tokenizer import load_tokenizer
from finetune.errors import UserError

PROMPT = "Instruction: What is the sentiment of this news?\nInput: {}\nAnswer:"
USER_DEFINED = {"field_prompt": "context", "field_chosen": "good", "field_rejected": "bad"}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def pair_rows(n: int = 12) -> list[dict]:
    labels = ("positive", "negative", "neutral")
    return [
        {"context": PROMPT.format(f"Company {i} reported results ."), "good": f" {labels[i % 3]}", "bad": f" {labels[(i + 1) % 3]}"}
        for i in range(n)
    ]  # fmt: skip


def make_cfg(tiny_model_dir, tmp_path, datasets, **extra):
    raw = {
        "base_model": str(tiny_model_dir),
        "adapter": "lora",
        "rl": "dpo",
        "datasets": datasets,
        "sequence_len": 256,
        "dataset_prepared_path": str(tmp_path / "prepared"),
        **extra,
    }
    return config.validate(raw)


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    raw = {"base_model": str(tiny_model_dir), "adapter": "lora", "datasets": [{"path": "org/data"}]}
    return load_tokenizer(config.validate(raw))


def base(**extra) -> dict:
    return {"base_model": "org/model", "adapter": "lora", "datasets": [{"path": "org/data"}], **extra}


def problems(raw: dict) -> list[str]:
    with pytest.raises(config.ConfigError) as exc:
        config.validate(raw)
    return exc.value.problems


# ---------------------------------------------------------------- config


def test_other_rl_methods_are_refused_in_one_line_each():
    implemented = "implemented: dpo, grpo, kto, orpo, simpo"
    assert problems(base(rl="ipo")) == [
        f"<config>: rl: 'ipo' is not implemented yet ({implemented}) (rl: dpo with dpo_loss_type: ipo trains the IPO loss)"
    ]
    assert problems(base(rl="ppo")) == [f"<config>: rl: 'ppo' is not a known method ({implemented})"]


def test_dpo_beta_is_read_as_rl_beta_with_a_warning(capsys):
    cfg = config.validate(base(rl="dpo", dpo_beta=0.25))
    assert cfg.rl_beta == 0.25 and cfg.dpo_beta is None
    assert "dpo_beta: deprecated" in capsys.readouterr().err
    assert "rl_beta: 0.25" in config.to_yaml(cfg)  # the saved config says what ran, under today's name
    assert problems(base(rl="dpo", dpo_beta=0.2, rl_beta=0.1)) == [
        "<config>: dpo_beta: deprecated name of rl_beta; set only rl_beta"
    ]


def test_preference_keys_and_data_are_refused_outside_preference_runs():
    assert problems(base(rl_beta=0.1)) == [
        "<config>: rl_beta: only used by rl: dpo / kto / simpo: set rl: dpo or remove it"
    ]
    assert "num_labels: only used by reward models" in problems(base(num_labels=1))[0]
    assert "max_prompt_len: for preference data only" in problems(base(max_prompt_len=64))[0]
    pref = base(datasets=[{"path": "org/data", "type": USER_DEFINED}])
    assert problems(pref) == [
        "<config>: datasets[0].type: preference data: set rl: dpo or reward_model: true to train on it"
    ]
    assert "reward_model: cannot be combined with rl: dpo" in problems(base(rl="dpo", reward_model=True))[0]
    assert "num_labels: must be 1" in problems(base(reward_model=True, num_labels=2))[0]


def test_preference_runs_need_preference_data_and_refuse_sft_only_keys():
    alpaca = base(rl="dpo", datasets=[{"path": "org/data", "type": "alpaca"}])
    assert "datasets[0].type: dpo trains on preference pairs" in problems(alpaca)[0]
    sft = base(reward_model=True, datasets=[{"path": "org/data", "type": {"field_instruction": "q"}}])
    assert "datasets[0].type: reward trains on preference pairs" in problems(sft)[0]
    for key in ("sample_packing", "group_by_length", "train_on_inputs"):
        assert problems(base(rl="dpo", **{key: True}))[0].startswith(f"<config>: {key}: ")
    # no `type:` reads the prompt/chosen/rejected columns, spelled out in the saved config
    cfg = config.validate(base(rl="dpo"))
    assert cfg.datasets[0].type == config.PreferenceType()
    assert config.validate(config.resolved_dict(cfg)).datasets[0].type == config.PreferenceType()


def test_unknown_key_in_a_preference_type_gets_a_suggestion():
    raw = base(
        rl="dpo", datasets=[{"path": "org/data", "type": {**USER_DEFINED, "chosen_fromat": "{chosen}"}}]
    )
    assert problems(raw) == [
        "<config>: datasets[0].type.chosen_fromat: unknown key (did you mean chosen_format?)"
    ]


# ---------------------------------------------------------------- formats and token layout


def test_user_defined_rows_keep_sft_token_layout(tiny_model_dir, tmp_path, tok):
    t = {
        **USER_DEFINED,
        "field_system": "sys",
        "prompt_format": "{system}| {prompt}",
        "chosen_format": "{chosen}!",
    }
    cfg = make_cfg(tiny_model_dir, tmp_path, [{"path": "org/x", "type": t}])
    spec = preference.pair_spec(cfg, cfg.datasets[0], "datasets[0]", tok)
    row = {"context": "Q?", "good": " yes", "bad": " no", "sys": "S"}
    assert preference.render_pair(spec, row, tok) == ("S| Q?", " yes!", " no")
    out = preference.encode_pairs(spec, tok, [row])
    assert out["prompt_ids"][0] == tok("S| Q?")["input_ids"]  # the tokenizer's BOS, as SFT prompts have it
    assert out["chosen_ids"][0] == tok(" yes!", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert out["rejected_ids"][0][-1] == tok.eos_token_id
    # the row's system is optional: {system} renders empty without it
    assert preference.render_pair(spec, {"context": "Q?", "good": "a", "bad": "b"}, tok)[0] == "| Q?"


def test_chat_template_rows_split_prompt_and_answer_at_the_generation_prompt(tiny_model_dir, tmp_path, tok):
    ds = {"path": "org/x", "type": "chat_template", "field_messages": "conversation"}
    cfg = make_cfg(tiny_model_dir, tmp_path, [{**ds, "field_chosen": "c", "field_rejected": "r"}])
    spec = preference.pair_spec(cfg, cfg.datasets[0], "datasets[0]", tok)
    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Sentiment?"}]
    rows = [
        {"conversation": turns, "c": "positive", "r": {"role": "assistant", "content": "negative"}},
        {
            "conversation": "Sentiment?",
            "c": [*turns, {"role": "assistant", "content": "positive"}],
            "r": "neutral",
        },
    ]
    out = preference.encode_pairs(spec, tok, rows)
    assert out["status"] == [preference.OK, preference.OK]
    prompt = tok.decode(out["prompt_ids"][0])
    assert prompt.startswith("<|begin_of_text|>") and prompt.endswith(
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert "Be brief." in prompt and "Be brief." not in tok.decode(
        out["prompt_ids"][1]
    )  # a string = one user turn
    assert (
        tok.decode(out["chosen_ids"][0]) == "positive<|eot_id|>"
    )  # ends at its end-of-turn token, no second EOS
    assert tok.decode(out["rejected_ids"][0]) == "negative<|eot_id|>"
    assert tok.decode(out["chosen_ids"][1]) == "positive<|eot_id|>"


def test_a_bad_row_is_named_by_file_and_line(tiny_model_dir, tmp_path, tok):
    rows = pair_rows(4)
    rows[2] = {"context": "Q", "good": "a"}
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    cfg = make_cfg(tiny_model_dir, tmp_path, [{"path": str(path), "type": USER_DEFINED}])
    with pytest.raises(UserError, match=rf"^{path}:3: missing field 'bad'$"):
        data.prepare(cfg, tok)
    rows[2] = {"conversation": [{"role": "user"}], "chosen": "a", "rejected": "b"}
    path = write_jsonl(tmp_path / "chat.jsonl", [rows[2]])
    chat = {"path": str(path), "type": "chat_template", "field_messages": "conversation"}
    with pytest.raises(UserError, match=rf"^{path}:1: missing field 'conversation\[0\]\.content'$"):
        data.prepare(make_cfg(tiny_model_dir, tmp_path, [chat]), tok)


def test_processes_give_the_same_pairs_and_name_the_same_bad_line(tiny_model_dir, tmp_path, tok):
    rows = pair_rows(2300)  # three batches of rows: two worker processes get work
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    entry = [{"path": str(path), "type": USER_DEFINED}]
    one = data.build(make_cfg(tiny_model_dir, tmp_path, entry, dataset_processes=1), tok, show_progress=False)
    two = data.build(make_cfg(tiny_model_dir, tmp_path, entry, dataset_processes=2), tok, show_progress=False)
    assert one[0].equals(two[0]) and one[2] == two[2] and one[2]["rows_in"] == 2300
    rows[2100] = {"context": "Q", "good": "a"}
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    with pytest.raises(UserError, match=rf"^{path}:2101: missing field 'bad'$"):
        data.build(make_cfg(tiny_model_dir, tmp_path, entry, dataset_processes=2), tok, show_progress=False)


# ---------------------------------------------------------------- lengths, skips, the cache


def test_max_prompt_len_keeps_the_prompt_end_and_its_bos(tiny_model_dir, tmp_path, tok):
    path = write_jsonl(tmp_path / "pairs.jsonl", pair_rows(6))
    ds = [{"path": str(path), "type": USER_DEFINED}]
    full = data.prepare(make_cfg(tiny_model_dir, tmp_path, ds, shuffle_merged_datasets=False), tok)
    cut = data.prepare(
        make_cfg(tiny_model_dir, tmp_path, ds, max_prompt_len=8, shuffle_merged_datasets=False), tok
    )
    assert cut.path != full.path  # max_prompt_len is part of the cache key
    assert cut.stats["prompt_truncated"] == 6
    for long, short in zip(full.train["prompt_ids"], cut.train["prompt_ids"], strict=True):
        assert len(short) == 8 and short[0] == tok.bos_token_id and short[1:] == long[-7:]
    assert cut.train["chosen_ids"] == full.train["chosen_ids"]


def test_sequence_len_drops_or_truncates_pairs_and_every_skip_is_counted(tiny_model_dir, tmp_path, tok):
    rows = pair_rows(6)
    rows[0]["good"] = " positive" * 40  # too long for sequence_len
    rows[1]["bad"] = ""  # nothing to compare
    rows[2]["bad"] = rows[2]["good"]  # identical answers
    rows.append(dict(rows[3]))  # an exact duplicate
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    ds = [{"path": str(path), "type": USER_DEFINED}]
    drop = data.prepare(
        make_cfg(tiny_model_dir, tmp_path, ds, sequence_len=40, dataset_exact_deduplication=True), tok
    )
    s = drop.stats
    assert (s["rows_in"], s["dropped_too_long"], s["empty_answer"], s["same_answers"], s["duplicates"]) == (
        7,
        1,
        1,
        1,
        1,
    )
    assert s["train_rows"] == 3
    assert "skipped 1 pair whose two answers are identical" in preference_data.removals(s)
    cut = data.prepare(
        make_cfg(tiny_model_dir, tmp_path, ds, sequence_len=40, excess_length_strategy="truncate"), tok
    )
    assert cut.stats["truncated"] == 1 and cut.stats["train_rows"] == 5
    assert (
        max(
            len(p) + max(len(c), len(r))
            for p, c, r in zip(*(cut.train[k] for k in preference_data.COLUMNS), strict=True)
        )
        <= 40
    )


def test_prepare_splits_caches_and_reuses(tiny_model_dir, tmp_path, tok, capsys):
    path = write_jsonl(tmp_path / "pairs.jsonl", pair_rows(12))
    cfg = make_cfg(tiny_model_dir, tmp_path, [{"path": str(path), "type": USER_DEFINED}], val_set_size=3)
    first = data.prepare(cfg, tok)
    assert (len(first.train), len(first.eval)) == (9, 3)
    assert first.train.column_names == list(preference_data.COLUMNS)
    assert "9 train pairs, 3 eval pairs" in capsys.readouterr().out
    again = data.prepare(cfg, tok)
    assert again.path == first.path and "reused the cache" in capsys.readouterr().out
    assert again.train["chosen_ids"] == first.train["chosen_ids"]
    data.preprocess_command(cfg, inspect=1)
    shown = capsys.readouterr().out
    assert "pair 0:" in shown and "⟦" in shown


def test_generation_prompt_of_a_preference_run_is_its_training_prompt(tiny_model_dir, tmp_path, tok):
    cfg = make_cfg(
        tiny_model_dir,
        tmp_path,
        [{"path": "org/x", "type": {**USER_DEFINED, "prompt_format": "Q: {prompt}\nA:"}}],
    )
    row = {"context": "Sentiment of 'profit rose'?"}
    assert data.format_prompt(cfg, cfg.datasets[0], row, tok) == "Q: Sentiment of 'profit rose'?\nA:"
    assert (
        data.encode_prompt(cfg, cfg.datasets[0], row, tok)
        == tok("Q: Sentiment of 'profit rose'?\nA:")["input_ids"]
    )


@pytest.mark.parametrize(
    ("name", "metric"), [("examples/dpo.yaml", "rewards/accuracies"), ("examples/reward.yaml", "accuracy")]
)
def test_examples_run_as_a_smoke_test(name, metric, monkeypatch):
    from finetune import train

    monkeypatch.chdir(ROOT)  # the examples name their data relative to the repository
    out = train.run(config.load(ROOT / name), smoke=True)
    logged = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert any(metric in e for e in logged) and any(f"eval_{metric}" in e for e in logged)
    assert (out / "README.md").is_file() and (out / "adapter_model.safetensors").is_file()
