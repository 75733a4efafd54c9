"""Reading a run never runs its code (issue #26, item 1).

A GRPO config names reward functions as `module.function`: a file next to the config. Every command that reads
a config or a run folder (validate, plan, preprocess, card, merge, export, eval, generate, push) checks that
file statically; only `train` imports it, by file path, and training copies it into output_dir so the run is
self-contained. These tests plant a module that leaves a marker file when imported.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from finetune import config

ROOT = Path(__file__).resolve().parents[2]
EVIL = """
from pathlib import Path

Path({marker!r}).write_text("imported")


def reward(completions, **kwargs):
    return [0.0 for _ in completions]
"""


def finetune(*args, cwd) -> subprocess.CompletedProcess:
    """The `finetune` command in a fresh process (nothing cached from this one)."""
    return subprocess.run(
        [sys.executable, "-m", "finetune.cli", *map(str, args)],
        capture_output=True, text=True, cwd=cwd, timeout=600,
    )  # fmt: skip


@pytest.fixture(scope="module")
def grpo_example_run(tiny_model_dir, tmp_path_factory):
    """examples/grpo.yaml as a user runs it (its reward file grpo_rewards.py beside it), 2 steps."""
    out = tmp_path_factory.mktemp("grpo-example") / "run"
    result = finetune(
        "train", "examples/grpo.yaml", "--set", f"base_model={tiny_model_dir}", "--set", f"output_dir={out}",
        "--set", "max_steps=2", "--set", "save_steps=1", cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_training_copies_the_reward_module_into_the_run(grpo_example_run):
    out = grpo_example_run
    assert (out / "grpo_rewards.py").read_bytes() == (ROOT / "examples" / "grpo_rewards.py").read_bytes()
    card = (out / "README.md").read_text()
    assert "grpo_rewards.brevity" in card and "`grpo_rewards.py`, in this folder" in card
    from finetune.outputs import push_files

    pushed = {u.path_in_repo for u in push_files.run_uploads(out)}
    assert "grpo_rewards.py" in pushed and "config.yml" in pushed


def test_the_grpo_example_run_reads_back_in_a_fresh_process_from_another_path(grpo_example_run, tmp_path):
    """card, merge and eval of a copy of the run folder, in a folder where examples/ does not exist."""
    moved = tmp_path / "elsewhere" / "run"
    shutil.copytree(grpo_example_run, moved)
    assert not (tmp_path / "grpo_rewards.py").exists()
    (moved / "README.md").unlink()
    card = finetune("card", moved, cwd=tmp_path)
    assert card.returncode == 0, card.stderr
    assert "trained with GRPO" in (moved / "README.md").read_text()
    merged = finetune("merge", moved, "--out", tmp_path / "merged", "--dtype", "fp32", cwd=tmp_path)
    assert merged.returncode == 0, merged.stderr
    assert (tmp_path / "merged" / "config.json").is_file()
    scored = finetune(
        "eval", moved, "--data", ROOT / "examples" / "sentiment_test.jsonl", "--limit", "4",
        "--max-new-tokens", "2", cwd=tmp_path,
    )  # fmt: skip
    assert scored.returncode == 0, scored.stderr
    assert json.loads((moved / "eval_results.json").read_text())


@pytest.fixture()
def evil_run(grpo_example_run, tmp_path):
    """A copy of the run whose config.yml also names evil.reward, with evil.py beside it."""
    run = tmp_path / "downloaded-run"
    shutil.copytree(grpo_example_run, run)
    marker = tmp_path / "MARKER"
    (run / "evil.py").write_text(EVIL.format(marker=str(marker)))
    saved = yaml.safe_load((run / "config.yml").read_text())
    saved["trl"]["reward_funcs"] = [*saved["trl"]["reward_funcs"], "evil.reward"]
    saved["trl"]["reward_weights"] = [*saved["trl"]["reward_weights"], 1.0]
    (run / "config.yml").write_text(yaml.safe_dump(saved, sort_keys=False))
    return run, marker


def test_no_command_that_reads_a_run_imports_its_code(evil_run, tmp_path):
    run, marker = evil_run
    data = ROOT / "examples" / "sentiment_test.jsonl"
    commands = [
        ("validate", run / "config.yml"),
        ("plan", run / "config.yml", "--device", "cpu"),
        ("preprocess", run / "config.yml", "--set", f"dataset_prepared_path={tmp_path / 'prep'}"),
        ("card", run),
        ("merge", run, "--out", tmp_path / "merged", "--dtype", "fp32"),
        ("export", run, "--gguf", "--out", tmp_path / "gguf", "--quant", "f16"),
        ("eval", run, "--data", data, "--limit", "2", "--max-new-tokens", "2"),
        ("generate", run, "Is the market up?", "--max-new-tokens", "2"),
        ("push", run, "me/run", "--dry-run"),
    ]
    script = (
        "import sys\nfrom typer.testing import CliRunner\nfrom finetune.cli import app\n"
        f"for args in {[[str(a) for a in c] for c in commands]!r}:\n"
        "    r = CliRunner().invoke(app, args)\n"
        "    print(args[0], r.exit_code, repr(r.output[-300:]), repr(r.exception))\n"
    )  # one fresh process for all of them: nothing imported beforehand, and no torch start-up per command
    # cwd=ROOT: the saved config names its data as the user wrote it (examples/...), relative to where they run
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    codes = {line.split()[0]: line.split()[1] for line in result.stdout.splitlines() if line.strip()}
    assert set(codes) == {c[0] for c in commands}, result.stdout
    assert all(code == "0" for code in codes.values()), result.stdout  # each command did its work
    assert not marker.exists()  # ...and none ran evil.py
    pushed = result.stdout.split("push ")[1]
    assert "evil.py" in pushed  # what the config names is shown in the dry run, never executed


def test_train_imports_the_reward_module_and_the_edited_file_wins(evil_run, monkeypatch):
    from finetune import train

    run, marker = evil_run
    monkeypatch.chdir(ROOT)
    cfg = config.load(run / "config.yml")
    assert not marker.exists()
    train.run(cfg, smoke=True)
    assert marker.read_text() == "imported"
    marker.unlink()
    (run / "evil.py").write_text((run / "evil.py").read_text().replace('"imported"', '"edited"'))
    train.run(config.load(run / "config.yml"), smoke=True)
    assert marker.read_text() == "edited"  # not the module cached under its name by the first run


def test_two_configs_rewards_py_never_collide(tmp_path):
    from finetune.train.rewards import import_reward

    for name, value in (("a", 1.0), ("b", 2.0)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "rewards.py").write_text(
            f"def score(completions, **kwargs):\n    return [{value}] * len(completions)\n"
        )
    first = import_reward("rewards.score", tmp_path / "a")
    second = import_reward("rewards.score", tmp_path / "b")
    assert first(completions=["x"]) == [1.0] and second(completions=["x"]) == [2.0]
    assert "rewards" not in sys.modules or not str(
        getattr(sys.modules["rewards"], "__file__", "")
    ).startswith(str(tmp_path))


@pytest.mark.parametrize(
    "source, name, problem",
    [
        ("def other(**kw):\n    pass\n", "rewards.score", "defines no function 'score'"),
        ("def score(completions):\n    pass\n", "rewards.score", "score() must accept **kwargs"),
        ("def score(:\n", "rewards.score", "syntax error"),
        ("", "nomodule.score", "no module 'nomodule' next to the config"),
        ("from helpers import score\n", "rewards.score", None),
        ("score = make_reward()\n", "rewards.score", None),
        ("async def score(completions, **kw):\n    pass\n", "rewards.score", None),
    ],
)
def test_reward_functions_are_checked_without_running_them(tmp_path, source, name, problem):
    from finetune.config.trl_keys import check_reward

    (tmp_path / "rewards.py").write_text("raise SystemExit('imported')\n" + source)
    if problem is None:
        assert check_reward(name, tmp_path) == tmp_path.resolve() / "rewards.py"
    else:
        with pytest.raises(
            ValueError, match=problem.replace("(", r"\(").replace(")", r"\)").replace("*", r"\*")
        ):
            check_reward(name, tmp_path)


MODELING = """
from pathlib import Path

from transformers import LlamaForCausalLM

Path({marker!r}).write_text("imported")


class CustomForCausalLM(LlamaForCausalLM):
    pass
"""


@pytest.fixture()
def remote_code_run(grpo_example_run, tiny_model_dir, tmp_path):
    """A copy of the run whose config.yml sets trust_remote_code: true, over a base (the tiny model's weights)
    whose config.json maps AutoModelForCausalLM to a modeling file of its own that leaves a marker."""
    base = tmp_path / "custom-base"
    shutil.copytree(tiny_model_dir, base)
    marker = tmp_path / "MARKER"
    (base / "modeling_custom.py").write_text(MODELING.format(marker=str(marker)))
    model_config = json.loads((base / "config.json").read_text())
    model_config["auto_map"] = {"AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"}
    (base / "config.json").write_text(json.dumps(model_config))
    run = tmp_path / "downloaded-run"
    shutil.copytree(grpo_example_run, run)
    saved = yaml.safe_load((run / "config.yml").read_text())
    saved.update(base_model=str(base), trust_remote_code=True)
    (run / "config.yml").write_text(yaml.safe_dump(saved, sort_keys=False))
    return run, marker


def test_a_run_saved_with_trust_remote_code_loads_its_base_only_with_the_users_flag(
    remote_code_run, tmp_path
):
    run, marker = remote_code_run
    data = ROOT / "examples" / "sentiment_test.jsonl"
    commands = [
        ("merge", run, "--out", tmp_path / "merged"),
        ("export", run, "--gguf", "--out", tmp_path / "gguf"),
        ("eval", run, "--data", data, "--limit", "2"),
        ("generate", run, "Is the market up?"),
    ]
    script = (
        "import json\nfrom typer.testing import CliRunner\nfrom finetune.cli import app\n"
        f"for args in {[[str(a) for a in c] for c in commands]!r}:\n"
        "    r = CliRunner().invoke(app, args)\n"
        "    print(json.dumps([args[0], r.exit_code, str(r.exception)]))\n"
    )  # one fresh process for the four: no torch start-up each
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    expected = (
        f"{run / 'config.yml'}: trust_remote_code: true — loading this run's base runs the base's own code; "
        "pass --trust-remote-code if you trust it"
    )
    refused = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("[")]
    assert refused == [[c[0], 1, expected] for c in commands]  # CliRunner: a UserError (exit 2 under main)
    assert finetune("card", run, cwd=ROOT).returncode == 0  # reading alone loads no model: no flag needed
    assert not marker.exists()
    allowed = finetune(
        "merge", run, "--out", tmp_path / "merged", "--dtype", "fp32", "--trust-remote-code", cwd=ROOT
    )
    assert allowed.returncode == 0, allowed.stderr[-3000:]
    assert marker.read_text() == "imported"  # the flag is what lets the base's code run
