"""The command line: fast start, one line per problem and exit 2 for a user's mistake, no traceback."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT

PROBE = """
import sys
sys.argv = ["finetune", *sys.argv[1:]]
from finetune.cli import main
try:
    main()
except SystemExit as exc:
    code = exc.code
else:
    code = 0
heavy = sorted(m for m in ("torch", "transformers", "peft", "datasets") if m in sys.modules)
print("HEAVY=" + ",".join(heavy), file=sys.stderr)
sys.exit(code)
"""


def run_cli(*args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, "-c", PROBE, *map(str, args)], capture_output=True, text=True, cwd=cwd
    )


def test_help_lists_commands_and_imports_no_torch():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("train", "validate", "preprocess", "merge", "card", "tiny-model"):
        assert command in result.stdout
    assert "HEAVY=\n" in result.stderr


def test_validate_ok_imports_no_torch(tmp_path, tiny_model_dir):
    result = run_cli("validate", "examples/quickstart.yaml", "--set", f"base_model={tiny_model_dir}")
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout
    assert "HEAVY=\n" in result.stderr


def test_bad_config_exits_2_with_one_line_per_problem_and_no_traceback(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        "base_model: org/m\nadapter: lora\nlora_alhpa: 3\nlora_r: x\ndatasets:\n  - path: missing.jsonl\n"
    )
    result = run_cli("validate", path, cwd=tmp_path)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if not line.startswith("HEAVY=")]
    assert lines == [
        f"{path}:3: lora_alhpa: unknown key (did you mean lora_alpha?)",
        f"{path}:4: lora_r: expected an integer (got 'x')",
        f"{path}:6: datasets[0].path: dataset file not found: missing.jsonl",
    ]
    assert "Traceback" not in result.stderr


def test_bad_data_file_is_exactly_one_line_on_stderr(tmp_path, tiny_model_dir):
    (tmp_path / "rows.jsonl").write_text(
        '{"instruction": "a", "output": "b"}\n{"instruction": "a" "output": 1}\n'
    )
    (tmp_path / "empty.jsonl").write_text("")
    for name, message in (
        ("rows.jsonl", "rows.jsonl:2: invalid JSON (Expecting ',' delimiter, column 21)"),
        ("empty.jsonl", "empty.jsonl: the file is empty"),
    ):
        (tmp_path / "c.yaml").write_text(
            f"base_model: {tiny_model_dir}\nadapter: lora\ndatasets:\n  - path: {name}\n    type: alpaca\n"
        )
        result = run_cli("preprocess", "c.yaml", cwd=tmp_path)
        assert result.returncode == 2
        assert [line for line in result.stderr.splitlines() if not line.startswith("HEAVY=")] == [message]
        assert not (tmp_path / "last_run_prepared").exists() or not any(
            (tmp_path / "last_run_prepared").iterdir()
        )  # nothing written half-way


def test_unknown_command_is_a_usage_error():
    result = run_cli("trian")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_tiny_model_command_is_byte_identical_across_runs(tmp_path):
    """The command in a fresh process writes the same bytes as the same call in this one (another process)."""
    from finetune.model.tiny import write_tiny_model

    result = run_cli("tiny-model", tmp_path / "a", "--seed", "3")
    assert result.returncode == 0, result.stderr
    write_tiny_model(tmp_path / "b", seed=3)
    files_a = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert "model.safetensors" in files_a and "tokenizer.json" in files_a
    for name in files_a:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_ctrl_c_outside_training_exits_130_without_a_traceback(monkeypatch, capsys):
    import pytest

    from finetune import cli

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "app", interrupted)
    monkeypatch.setattr(sys, "argv", ["finetune", "preprocess", "c.yaml"])
    with pytest.raises(SystemExit) as info:
        cli.main()
    assert info.value.code == 130
    assert capsys.readouterr().err.strip() == "interrupted"


def test_console_script_exits_quickly_with_the_right_code_after_exit_handlers(tmp_path):
    """`console_main` ends with os._exit after running atexit handlers; exit codes are those of `main`."""
    probe = (
        "import atexit, sys\n"
        f"atexit.register(lambda: open({str(tmp_path / 'ran')!r}, 'w').write('yes'))\n"
        "sys.argv = ['finetune', *sys.argv[1:]]\n"
        "from finetune.cli import console_main\n"
        "console_main()\n"
    )
    ok = subprocess.run([sys.executable, "-c", probe, "--help"], capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0 and "train" in ok.stdout  # flushed before the quick exit
    assert (tmp_path / "ran").read_text() == "yes"
    bad = subprocess.run(
        [sys.executable, "-c", probe, "validate", str(tmp_path / "missing.yaml")],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_validate_refuses_a_base_model_path_that_does_not_exist(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("base_model: /no/such/folder\nadapter: lora\ndatasets:\n  - path: org/data\n")
    result = run_cli("validate", path, cwd=tmp_path)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if not line.startswith("HEAVY=")]
    assert lines == [f"{path}:1: base_model: not found: /no/such/folder (a hub id is name or org/name)"]


def test_help_imports_neither_torch_nor_the_recipe_nor_the_config_schema():
    """`finetune --help` stays fast: torch, finetune.train and the pydantic schema are imported by commands, not
    by the command table."""
    probe = (
        "import sys\nsys.argv = ['finetune', '--help']\nfrom finetune import cli\n"
        "try:\n    cli.main()\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'finetune.train', 'finetune.config.schema') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "train" in result.stdout and result.stdout.strip().splitlines()[-1] == "[]"
