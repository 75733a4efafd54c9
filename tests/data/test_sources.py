"""Loading data: file types, folders, hub ids offline, and the one-line errors for bad rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from finetune import config, data
from finetune.data import sources
from finetune.data.tokenizer import load_tokenizer
from finetune.errors import UserError

INST = {"field_instruction": "context", "field_output": "target", "format": "[INST] {instruction} [/INST]"}


def make_cfg(tiny_model_dir, tmp_path, dataset: dict, **extra):
    raw = {
        "base_model": str(tiny_model_dir),
        "adapter": "lora",
        "datasets": [{"type": INST, **dataset}],
        "dataset_prepared_path": str(tmp_path / "prepared"),
        "dataset_processes": 1,
        **extra,
    }
    return config.validate(raw)


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    raw = {"base_model": str(tiny_model_dir), "adapter": "lora", "datasets": [{"path": "org/data"}]}
    return load_tokenizer(config.validate(raw))


def prepare_error(cfg, tok) -> list[str]:
    with pytest.raises(UserError) as info:
        data.prepare(cfg, tok)
    assert not any(Path(cfg.prepared_path).glob("*/*"))  # nothing written, not even half a cache
    return info.value.problems


GOOD = '{"context": "q1", "target": "a1"}\n'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            GOOD + '{"context": "q2" "target": "a2"}\n',
            "{path}:2: invalid JSON (Expecting ',' delimiter, column 18)",
        ),
        (GOOD + "\n" + '{"context": "q3"}\n', "{path}:3: missing field 'target'"),
        (
            GOOD + '{"context": "q2", "target": 5}\n',
            "{path}:2: field 'target': expected a string, got int '5'",
        ),
        ('{"context": "q", "target": 1}\n', "{path}:1: field 'target': expected a string, got int '1'"),
        (GOOD + '["q", "a"]\n', "{path}:2: expected one JSON object per line, got a list"),
    ],
)
def test_bad_jsonl_rows_name_file_line_and_field(tiny_model_dir, tmp_path, tok, text, message):
    path = tmp_path / "rows.jsonl"
    path.write_text(text)
    cfg = make_cfg(tiny_model_dir, tmp_path, {"path": str(path)})
    assert prepare_error(cfg, tok) == [message.format(path=path)]


def test_bad_row_in_parquet_and_csv_names_the_row_index(tiny_model_dir, tmp_path, tok):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(
        pa.table({"context": ["a", "b", "c"], "target": ["x", None, "z"]}), tmp_path / "rows.parquet"
    )
    cfg = make_cfg(tiny_model_dir, tmp_path, {"path": str(tmp_path / "rows.parquet")})
    assert prepare_error(cfg, tok) == [f"{tmp_path / 'rows.parquet'}: row 1: missing field 'target'"]
    (tmp_path / "rows.csv").write_text("context,answer\nq,a\n")
    cfg = make_cfg(tiny_model_dir, tmp_path, {"path": str(tmp_path / "rows.csv")})
    assert prepare_error(cfg, tok) == [f"{tmp_path / 'rows.csv'}: row 0: missing field 'target'"]


def test_folder_csv_parquet_and_data_files(tiny_model_dir, tmp_path, tok):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "a.jsonl").write_text(GOOD * 2)
    (folder / "b.csv").write_text("context,target\nq,a\nq2,a2\nq3,a3\n")
    pq.write_table(pa.table({"context": ["p"], "target": ["t"]}), folder / "c.parquet")
    (folder / "notes.md").write_text("ignored")
    files = sources.local_files(config.DatasetConfig(path=str(folder)), "datasets[0]")
    assert [(p.name, loader) for p, loader in files] == [
        ("a.jsonl", "json"),
        ("b.csv", "csv"),
        ("c.parquet", "parquet"),
    ]
    prepared = data.prepare(make_cfg(tiny_model_dir, tmp_path, {"path": str(folder)}), tok)
    assert prepared.stats["rows_in"] == 6 and len(prepared.train) == 6
    only_csv = make_cfg(tiny_model_dir, tmp_path, {"path": str(folder), "data_files": "*.csv"})
    assert data.prepare(only_csv, tok).stats["rows_in"] == 3


def test_hub_dataset_offline_is_one_line_naming_it(tiny_model_dir, tmp_path, tok, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = make_cfg(tiny_model_dir, tmp_path, {"path": "no-such-org/no-such-dataset"})
    problems = prepare_error(cfg, tok)
    assert len(problems) == 1
    assert problems[0].startswith(
        "datasets[0].path: cannot load dataset 'no-such-org/no-such-dataset' (offline: HF_HUB_OFFLINE is set): "
    )


def test_unknown_extension_needs_ds_type(tiny_model_dir, tmp_path, tok):
    path = tmp_path / "rows.data"
    path.write_text(GOOD)
    with pytest.raises(UserError) as info:
        data.prepare(make_cfg(tiny_model_dir, tmp_path, {"path": str(path)}), tok)
    assert info.value.problems == [
        f"datasets[0].ds_type: cannot tell the format of {path} from its extension: set ds_type (json, csv, parquet, arrow, text)"
    ]
    assert (
        data.prepare(make_cfg(tiny_model_dir, tmp_path, {"path": str(path), "ds_type": "json"}), tok).stats[
            "rows_in"
        ]
        == 1
    )


def test_json_array_file_and_error_exit_code_from_the_cli(tiny_model_dir, tmp_path, monkeypatch, capsys):
    import sys

    from finetune import cli

    path = tmp_path / "rows.json"
    path.write_text(json.dumps([{"context": "q", "target": "a"}, {"context": "q2", "target": ""}], indent=1))
    cfg_path = tmp_path / "cfg.yaml"
    body = {
        "base_model": str(tiny_model_dir),
        "adapter": "lora",
        "datasets": [{"path": str(path), "type": INST}],
        "dataset_prepared_path": str(tmp_path / "prepared"),
    }
    cfg_path.write_text(json.dumps(body))
    monkeypatch.setattr(sys, "argv", ["finetune", "preprocess", str(cfg_path)])
    with pytest.raises(SystemExit) as info:
        cli.main()
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "skipped 1 row with an empty answer" in out
    path.write_text('[{"context": "q", "target": "a"},\n {"context": "q2", "target": "a2"]')
    with pytest.raises(SystemExit) as info:
        cli.main()
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"{path}:2: invalid JSON (Expecting ',' delimiter, column 34)"]
