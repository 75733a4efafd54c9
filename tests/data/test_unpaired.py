"""rl: kto's unpaired rows (data/unpaired.py, data/unpaired_format.py): the layouts read (TRL's prompt/completion/
label, axolotl's chatml.* / llama3.* KTO types and field_completion dicts), their exact tokens and the trained
part TRL sees, pairs split in two, length rules, the cache, and the one-line refusals (exit 2, nothing written)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from finetune import config, data
from finetune.data import unpaired
from finetune.data import unpaired_format as fmt
from finetune.data.tokenizer import load_tokenizer
from finetune.errors import UserError

TURN = "<|start_header_id|>{}<|end_header_id|>\n\n{}<|eot_id|>"
ASSISTANT = "<|start_header_id|>assistant<|end_header_id|>\n\n"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def trl_rows(n: int = 8) -> list[dict]:
    return [{"prompt": f"News {i}: profit rose. Sentiment:", "completion": " positive" if i % 2 else " negative",
             "label": i % 2 == 1} for i in range(n)]  # fmt: skip


def make_cfg(tiny_model_dir, tmp_path, datasets, rl="kto", **extra):
    return config.validate({
        "base_model": str(tiny_model_dir), "adapter": "lora", "rl": rl, "datasets": datasets, "sequence_len": 64,
        "dataset_prepared_path": str(tmp_path / "prepared"), **extra,
    })  # fmt: skip


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    raw = {"base_model": str(tiny_model_dir), "adapter": "lora", "datasets": [{"path": "org/data"}]}
    return load_tokenizer(config.validate(raw))


def encoded(tiny_model_dir, tmp_path, tok, ds: dict, rows: list[dict]) -> dict:
    cfg = make_cfg(tiny_model_dir, tmp_path, [ds])
    return fmt.encode_rows(fmt.unpaired_spec(cfg, cfg.datasets[0], "datasets[0]", tok), tok, rows)


# ---------------------------------------------------------------- layouts and exact tokens


def test_trl_text_row_tokens_and_what_kto_trains(tiny_model_dir, tmp_path, tok):
    from trl.trainer.kto_trainer import DataCollatorForUnpairedPreference

    out = encoded(
        tiny_model_dir,
        tmp_path,
        tok,
        {"path": "org/x"},
        [{"prompt": "Q:", "completion": " yes", "label": "False"}],
    )
    assert out["status"] == [fmt.OK] and out["label"] == [False]  # the string "False" reads as false
    prompt = tok("Q:")["input_ids"]  # the tokenizer's BOS, as SFT and pair prompts have it
    answer = tok(" yes", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert out["prompt_ids"] == [prompt] and out["completion_ids"] == [answer]
    # TRL's KTO collator, fed the row as the trainer is: the prompt is masked, the answer and its EOS trained
    batch = DataCollatorForUnpairedPreference(pad_token_id=0)([{k: out[k][0] for k in unpaired.COLUMNS}])
    assert batch["input_ids"][0].tolist() == prompt + answer
    assert batch["completion_mask"][0].tolist() == [0] * len(prompt) + [1] * len(answer)


def test_trl_conversational_row_uses_the_chat_template(tiny_model_dir, tmp_path, tok):
    rows = [{"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Up?"}],
             "completion": [{"role": "assistant", "content": "yes"}], "label": True}]  # fmt: skip
    out = encoded(tiny_model_dir, tmp_path, tok, {"path": "org/x"}, rows)
    text = "<|begin_of_text|>" + TURN.format("system", "Be brief.") + TURN.format("user", "Up?") + ASSISTANT
    assert out["prompt_ids"] == [tok(text, add_special_tokens=False)["input_ids"]]  # one BOS: the template's
    assert out["completion_ids"] == [
        tok("yes<|eot_id|>", add_special_tokens=False)["input_ids"]
    ]  # no 2nd EOS
    cfg = make_cfg(tiny_model_dir, tmp_path, [{"path": "org/x"}])
    assert (
        data.encode_prompt(cfg, cfg.datasets[0], rows[0], tok) == out["prompt_ids"][0]
    )  # generation asks so


@pytest.mark.parametrize(
    ("kind", "row", "user"),
    [
        ("ultra", {"prompt": "Up?", "completion": "yes", "label": True, "system": "Be brief."}, "Up?"),
        ("argilla", {"instruction": "Up?", "completion": "yes", "label": True}, "Up?"),
        ("intel", {"question": "Up?", "completion": "yes", "label": True, "system": ""}, "Up?"),
        (
            "argilla_chat",
            {
                "completion": [{"role": "user", "content": "Up?"}, {"role": "assistant", "content": "yes"}],
                "label": True,
            },
            "Up?",
        ),  # fmt: skip
    ],
)
def test_axolotl_llama3_kto_types_read_their_columns(kind, row, user, tiny_model_dir, tmp_path, tok):
    out = encoded(tiny_model_dir, tmp_path, tok, {"path": "org/x", "type": f"llama3.{kind}"}, [row])
    system = TURN.format("system", row["system"]) if row.get("system") else ""
    text = "<|begin_of_text|>" + system + TURN.format("user", user) + ASSISTANT
    assert tok.decode(out["prompt_ids"][0]) == text
    assert tok.decode(out["completion_ids"][0]) == "yes<|eot_id|>" and out["label"] == [True]


def test_user_defined_kto_dict_and_generation_prompt(tiny_model_dir, tmp_path, tok):
    t = {"field_prompt": "q", "field_completion": "a", "field_label": "ok", "prompt_format": "Q: {prompt}\nA:",
         "completion_format": " {completion}!"}  # fmt: skip
    out = encoded(
        tiny_model_dir, tmp_path, tok, {"path": "org/x", "type": t}, [{"q": "Up?", "a": "yes", "ok": False}]
    )
    assert out["prompt_ids"] == [tok("Q: Up?\nA:")["input_ids"]]
    assert out["completion_ids"] == [tok(" yes!", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]]
    cfg = make_cfg(tiny_model_dir, tmp_path, [{"path": "org/x", "type": t}])
    assert data.encode_prompt(cfg, cfg.datasets[0], {"q": "Up?"}, tok) == out["prompt_ids"][0]
    chat = make_cfg(tiny_model_dir, tmp_path, [{"path": "org/x", "type": "llama3.ultra"}])
    ids = data.encode_prompt(chat, chat.datasets[0], {"prompt": "Up?"}, tok)
    assert ids.count(tok.bos_token_id) == 1 and tok.decode(ids).endswith(ASSISTANT)


# ---------------------------------------------------------------- the tables


def test_pairs_and_unpaired_files_mix_lengths_dedup_split_and_cache(tiny_model_dir, tmp_path, tok, capsys):
    rows = trl_rows(8)
    rows[0]["completion"] = " positive" * 80  # too long for sequence_len 64
    rows[1]["completion"] = ""  # nothing to train
    rows.append(dict(rows[3]))  # an exact duplicate
    single = write_jsonl(tmp_path / "rows.jsonl", rows)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "Q:", "chosen": " a", "rejected": " b"}] * 2)
    ds = [{"path": str(single)}, {"path": str(pairs)}]
    cfg = make_cfg(tiny_model_dir, tmp_path, ds, dataset_exact_deduplication=True, val_set_size=2)
    first = data.prepare(cfg, tok)
    s = first.stats
    assert first.train.column_names == list(unpaired.COLUMNS)
    assert (s["rows_in"], s["dropped_too_long"], s["empty_answer"], s["duplicates"]) == (11, 1, 1, 3)
    assert (s["unpaired_rows"], s["pairs_split"]) == (7, 2)  # 6 kept + the duplicate; 2 pairs -> 4 rows
    assert s["train_rows"] + s["eval_rows"] == 8 and s["eval_rows"] == 2
    assert s["desirable"] + s["undesirable"] == s["train_rows"] and s["desirable"] and s["undesirable"]
    shown = capsys.readouterr().out
    assert f"data: kto: {s['desirable']} desirable and {s['undesirable']} undesirable train rows" in shown
    again = data.prepare(cfg, tok)
    assert again.path == first.path and "reused the cache" in capsys.readouterr().out
    dpo = make_cfg(tiny_model_dir, tmp_path, [{"path": str(pairs)}], rl="dpo")
    kto = make_cfg(tiny_model_dir, tmp_path, [{"path": str(pairs)}])
    assert data.fingerprint(dpo, tok) != data.fingerprint(kto, tok)  # pairs vs rows: never the same cache
    cut = data.prepare(
        make_cfg(tiny_model_dir, tmp_path, ds, excess_length_strategy="truncate", max_prompt_len=4), tok
    )
    assert cut.stats["truncated"] == 1 and cut.stats["prompt_truncated"] == 8  # the pairs' "Q:" fits
    assert all(len(p) <= 4 and p[0] == tok.bos_token_id for p in cut.train["prompt_ids"])
    assert (
        max(
            len(p) + len(c) for p, c in zip(cut.train["prompt_ids"], cut.train["completion_ids"], strict=True)
        )
        <= 64
    )
    data.preprocess_command(cfg, inspect=2)
    assert "row 0:" in capsys.readouterr().out


def test_test_datasets_hold_out_and_dedupe_against_training(tiny_model_dir, tmp_path, tok):
    rows = write_jsonl(tmp_path / "rows.jsonl", trl_rows(8))
    test = write_jsonl(
        tmp_path / "test.jsonl", trl_rows(8)[:3] + [{"prompt": "X", "completion": " y", "label": True}]
    )
    cfg = make_cfg(tiny_model_dir, tmp_path, [{"path": str(rows)}], test_datasets=[{"path": str(test)}],
                   dataset_exact_deduplication=True)  # fmt: skip
    prepared = data.prepare(cfg, tok)
    assert (len(prepared.train), len(prepared.eval)) == (8, 1)  # 3 test rows are training rows


# ---------------------------------------------------------------- one-line errors


@pytest.mark.parametrize(
    ("rows", "rl", "expected"),
    [
        ([{"prompt": "a", "completion": " b", "label": True}, {"prompt": "a", "completion": " c", "label": 1}],
         "kto", "{path}:2: field 'label': expected true or false, got 1 (int)"),
        ([{"prompt": "a", "completion": " b", "label": "yes"}],
         "kto", "{path}:1: field 'label': expected true or false, got 'yes' (str)"),
        ([{"prompt": "a", "completion": " b"}],
         "kto", "{path}:1: missing field 'label' (unpaired rows need a label: true = desirable, false = undesirable)"),
        ([{"prompt": "a", "completion": " b", "label": True}, {"prompt": "c", "completion": " d", "label": True}],
         "kto", "datasets: rl: kto needs desirable and undesirable rows, but all 2 training rows are desirable: "
                "add undesirable (label false) rows, or train on pairs (each pair gives one of each)"),
        ([{"prompt": "a", "completion": " b", "label": True}, {"prompt": "c", "completion": " d", "label": False}],
         "dpo", "datasets[0]: {path} holds unpaired rows (prompt, completion, label): rl: dpo needs chosen/rejected "
                "pairs; rl: kto reads unpaired rows"),
    ],
)  # fmt: skip
def test_bad_unpaired_data_is_one_line_exit_2_and_nothing_written(
    rows, rl, expected, tiny_model_dir, tmp_path, monkeypatch, capsys
):
    """`finetune train` as the console script runs it (cli.main, in this process: no interpreter start-up)."""
    from finetune import cli

    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    cfg = {"base_model": str(tiny_model_dir), "adapter": "lora", "rl": rl, "datasets": [{"path": str(path)}],
           "dataset_prepared_path": str(tmp_path / "prepared"), "output_dir": str(tmp_path / "out")}  # fmt: skip
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.setattr(sys, "argv", ["finetune", "train", str(tmp_path / "run.yaml")])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == expected.format(path=path)
    assert not (tmp_path / "out").exists() and not (tmp_path / "prepared").exists()


def test_unpaired_types_are_refused_for_pair_methods_and_sft():
    def problems(**extra):
        raw = {
            "base_model": "org/m",
            "adapter": "lora",
            "datasets": [{"path": "org/d", "type": "chatml.ultra"}],
            **extra,
        }
        with pytest.raises(config.ConfigError) as exc:
            config.validate(raw)
        return [p.split(": ", 1)[1] for p in exc.value.problems]

    assert problems(rl="orpo") == [
        "datasets[0].type: unpaired rows (a completion and a true/false label): rl: orpo needs chosen/rejected "
        "pairs; rl: kto reads unpaired rows"
    ]
    assert problems() == [
        "datasets[0].type: unpaired rows (a completion and a true/false label): set rl: kto to train on them"
    ]
    raw = {"base_model": "org/m", "adapter": "lora", "rl": "kto",
           "datasets": [{"path": "org/d", "type": {"field_completion": "a", "completion_fmt": "{a}"}}]}  # fmt: skip
    with pytest.raises(config.ConfigError) as exc:
        config.validate(raw)
    assert (
        "datasets[0].type.completion_fmt: unknown key (did you mean completion_format?)"
        in exc.value.problems[0]
    )


def test_a_named_type_the_tokenizer_cannot_honour_is_one_line(tiny_model_dir, tmp_path, tok):
    path = write_jsonl(tmp_path / "rows.jsonl", [{"question": "a", "completion": "b", "label": True}])
    cfg = make_cfg(tiny_model_dir, tmp_path, [{"path": str(path), "type": "chatml.intel"}])
    with pytest.raises(UserError, match=r"^datasets\[0\]\.type: chatml ends each turn with <\|im_end\|>"):
        data.build(cfg, tok, show_progress=False)
