"""lm-evaluation-harness: `finetune eval --tasks` on the real SmolLM2 (GGUF base + LoRA) gives lm-eval's own
`lm_eval --model hf` numbers on the merged folder, and the card shows base → run; `lm_eval_tasks` evaluates at the
end of training, and an unknown task name stops a run up front.

The two local tasks (tests/lm_eval_tasks/) read `lm_eval_sentiment.jsonl` from the working folder, which the tests
write there (made from conftest's sentiment rows), so everything runs offline.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, sentiment_rows

TASKS_DIR = ROOT / "tests" / "lm_eval_tasks"
MC, GEN = "finetune_sentiment_mc", "finetune_capitals_gen"
LABELS = ["negative", "neutral", "positive"]
LIMIT = 8

pytest.importorskip("lm_eval", reason="lm-eval is an optional extra: pip install -e '.[eval]'")


CAPITALS = [("France", "Paris"), ("Australia", "Canberra"), ("Japan", "Tokyo"), ("Canada", "Ottawa"),
            ("Italy", "Rome"), ("Turkey", "Ankara"), ("Germany", "Berlin"), ("Brazil", "Brasilia")]  # fmt: skip


def write_task_data(folder: Path) -> None:
    """The rows the local tasks read (relative to the working folder, as their YAMLs name the files)."""
    rows = [{**r, "label": LABELS.index(r["target"])} for r in sentiment_rows(12, seed=5)]
    (folder / "lm_eval_sentiment.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    capitals = [{"country": country, "capital": capital} for country, capital in CAPITALS]
    (folder / "lm_eval_capitals.jsonl").write_text("".join(json.dumps(r) + "\n" for r in capitals))


def lm_eval_command(model_dir: Path, cwd: Path) -> dict:
    """lm-eval's own command on a model folder: its results by task."""
    out = cwd / "lm_eval_out"
    subprocess.run(
        [sys.executable, "-m", "lm_eval", "run", "--model", "hf",
         "--model_args", f"pretrained={model_dir},dtype=float32", "--tasks", f"{MC},{GEN}",
         "--include_path", str(TASKS_DIR), "--limit", str(LIMIT), "--batch_size", "4", "--device", "cpu",
         "--output_path", str(out)],
        cwd=cwd, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=900,
    )  # fmt: skip
    (results_file,) = out.rglob("results_*.json")
    return json.loads(results_file.read_text())["results"]


@pytest.mark.real
@pytest.mark.slow
def test_eval_tasks_equal_lm_evals_own_command_on_the_merged_folder(smollm2_gguf_run, tmp_path, monkeypatch):
    from huggingface_hub import ModelCard
    from typer.testing import CliRunner

    from finetune.cli import app
    from finetune.outputs import merge

    _, trained = smollm2_gguf_run
    run = Path(shutil.copytree(trained, tmp_path / "run"))
    work = tmp_path / "work"
    work.mkdir()
    write_task_data(work)
    monkeypatch.chdir(work)

    args = ["eval", str(run), "--tasks", f"{MC},{GEN}", "--include-path", str(TASKS_DIR), "--limit", str(LIMIT),
            "--batch-size", "4"]  # fmt: skip
    base = CliRunner().invoke(app, [*args, "--base-only"])
    assert base.exit_code == 0, base.output
    tuned = CliRunner().invoke(app, args)
    assert tuned.exit_code == 0, tuned.output
    saved = json.loads((run / "eval_results.json").read_text())["lm_eval"]
    assert set(saved) == {MC, GEN} and all(set(saved[t]) == {"base", "finetuned"} for t in saved)
    assert set(saved[MC]["finetuned"]["metrics"]) == {"acc,none", "acc_norm,none", "brier_score,none"}
    assert set(saved[GEN]["finetuned"]["metrics"]) == {"exact_match,none"}

    merged = tmp_path / "merged"
    merge.merge_command(run, merged, dtype="fp32")
    theirs = lm_eval_command(merged, work)
    for task, ours in ((MC, saved[MC]["finetuned"]), (GEN, saved[GEN]["finetuned"])):
        assert ours["samples"] == LIMIT
        for metric, value in ours["metrics"].items():
            # merged vs base + adapter: logits within fp32 rounding, so accuracies are equal and the
            # probabilities' Brier score agrees far below the card's 4 decimals
            assert value == pytest.approx(theirs[task][metric], abs=1e-5), (task, metric)
    assert 0 < saved[GEN]["finetuned"]["metrics"]["exact_match,none"] < 1  # the greedy answers were read
    # `finetune eval --tasks` on the merged folder itself: the same numbers again
    on_merged = CliRunner().invoke(app, ["eval", str(merged), *args[2:]])
    assert on_merged.exit_code == 0, on_merged.output
    merged_saved = json.loads((merged / "eval_results.json").read_text())["lm_eval"]
    for task in (MC, GEN):
        assert merged_saved[task]["finetuned"]["model"] == "merged"
        for metric, value in merged_saved[task]["finetuned"]["metrics"].items():
            assert value == pytest.approx(theirs[task][metric], abs=1e-5), (task, metric)

    # the card: base → run for every task and metric, and the run's figures in the model-index
    card = (run / "README.md").read_text()
    for task, metric, label in ((MC, "acc,none", "acc"), (MC, "brier_score,none", "brier_score"),
                                (GEN, "exact_match,none", "exact_match")):  # fmt: skip
        before, after = saved[task]["base"]["metrics"][metric], saved[task]["finetuned"]["metrics"][metric]
        assert f"| {task} | {label} | {LIMIT} | 0 | {before:.4f} → {after:.4f} |" in card
    index = {(r.dataset_name, r.metric_type, r.metric_value, r.source_name)
             for r in ModelCard.load(run / "README.md").data.eval_results}  # fmt: skip
    for task, metric in ((MC, "acc"), (MC, "brier_score"), (GEN, "exact_match")):
        value = saved[task]["finetuned"]["metrics"][f"{metric},none"]
        assert (task, metric, value, "lm-evaluation-harness") in index


def finetune_cli(*args, cwd: Path, monkeypatch, capsys) -> subprocess.CompletedProcess:
    """The `finetune` command as the console script runs it (cli.main: a UserError's lines on stderr, exit 2),
    in this process: lm-eval and torch are imported once for the module, not per command."""
    from finetune import cli

    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["finetune", *map(str, args)])
    capsys.readouterr()
    try:
        cli.main()
        code = 0
    except SystemExit as exited:
        code = exited.code
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)


def test_unknown_task_is_one_line_before_anything_loads(tmp_path, monkeypatch, capsys):
    result = finetune_cli(
        "eval", tmp_path, "--tasks", f"{MC}x", "--include-path", TASKS_DIR, cwd=tmp_path, monkeypatch=monkeypatch,
        capsys=capsys,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert f"--tasks: unknown lm-eval task: {MC}x (did you mean {MC}" in line


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_lm_eval_tasks_score_the_model_when_training_ends(tiny_model_dir, tmp_path, monkeypatch):
    from conftest import sentiment_config
    from finetune import config, train

    write_task_data(tmp_path)
    monkeypatch.chdir(tmp_path)
    raw = sentiment_config(tmp_path, str(tiny_model_dir), rows=8, adapter="qlora", load_in_4bit=True,  # 4-bit
                           lm_eval_tasks=[MC, GEN], lm_eval_include_path=str(TASKS_DIR), lm_eval_limit=3,
                           lm_eval_batch_size=2)  # fmt: skip
    out = Path(train.run(config.validate(raw)))
    saved = json.loads((out / "eval_results.json").read_text())["lm_eval"]
    for task, metric in ((MC, "acc,none"), (GEN, "exact_match,none")):
        entry = saved[task]["finetuned"]
        assert entry["samples"] == 3 and entry["batch_size"] == 2 and 0 <= entry["metrics"][metric] <= 1
    card = (out / "README.md").read_text()
    assert "### lm-evaluation-harness" in card and f"| {MC} | acc | 3 | 0 | " in card


def test_unknown_lm_eval_task_stops_training_before_it_starts(
    tiny_model_dir, tmp_path, write_config, monkeypatch, capsys
):
    from conftest import sentiment_config

    raw = sentiment_config(tmp_path, str(tiny_model_dir), rows=8, lm_eval_tasks=[MC, "arc_easyy"],
                           lm_eval_include_path=str(TASKS_DIR))  # fmt: skip
    result = finetune_cli("train", write_config(raw), cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "lm_eval_tasks: unknown lm-eval task: arc_easyy (did you mean arc_easy" in line
    assert not (tmp_path / "out").exists() and not (tmp_path / "prepared").exists()
