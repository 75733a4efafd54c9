"""`finetune train` checks the fit first: refusal before anything is loaded or written, --no-fit-check,
micro_batch_size: auto, and the prediction beside the measured peak in all_results.json and the card."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from finetune import config
from finetune.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
QA = ROOT / "examples" / "finance_qa.jsonl"

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def raw_config(base: Path, out: Path, **over) -> dict:
    return {
        "base_model": str(base),
        "adapter": "lora",
        "lora_r": 4,
        "lora_target_linear": True,
        "datasets": [{"path": str(QA), "type": {"field_instruction": "context", "field_output": "target",
                                                 "format": "[INST] {instruction} [/INST]"}}],
        "sequence_len": 256,
        "micro_batch_size": 2,
        "max_steps": 2,
        "save_strategy": "no",
        "output_dir": str(out),
        **over,
    }  # fmt: skip


def test_refused_before_anything_is_loaded(tiny_model_dir, tmp_path, monkeypatch):
    from finetune import data, model, train

    def never(*args, **kwargs):
        raise AssertionError("loaded although the run does not fit")

    monkeypatch.setattr(model, "load", never)
    monkeypatch.setattr(data, "prepare", never)
    out = tmp_path / "out"
    cfg = config.validate(raw_config(tiny_model_dir, out))
    with pytest.raises(UserError) as caught:
        train.run(cfg, memory_gib=0.3)
    line = caught.value.problems[0]
    assert "predicted peak" in line and "does not fit 0.3 GiB" in line and "smallest fix:" in line
    assert not out.exists()


def test_cli_refusal_is_one_line_exit_2_nothing_written(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw_config(tiny_model_dir, out)))
    proc = subprocess.run(
        [sys.executable, "-m", "finetune.cli", "train", str(path), "--memory", "0.3"],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.strip() and "note:" not in x]
    assert len(lines) == 1 and lines[0].startswith("predicted peak"), proc.stderr
    assert "--no-fit-check" in lines[0]
    assert not out.exists()


def test_no_fit_check_runs_and_records_the_prediction(tiny_model_dir, tmp_path, write_config):
    """In its own process: the measured peak is the process's lifetime peak (ru_maxrss), which in the test
    process would be that of every test before this one."""
    out = tmp_path / "out"
    cfg = write_config(raw_config(tiny_model_dir, out))
    proc = subprocess.run(
        [sys.executable, "-m", "finetune.cli", "train", str(cfg), "--no-fit-check", "--memory", "0.3"],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "all_results.json").read_text())
    predicted, measured = results["predicted_peak_cpu_memory_mb"], results["peak_cpu_memory_mb"]
    assert 0.5 < predicted / measured < 2  # the same measure (process RSS), in the same unit
    # 0.3 GiB is tight: the heap is kept compact, so RSS follows the prediction (model.compute.cpu_heap)
    assert results["cpu_heap"] == "compact" and "RAM is tight" in proc.stderr
    card = (out / "README.md").read_text()
    assert "predicted peak CPU memory" in card and "peak CPU memory (MiB)" in card


def test_auto_micro_batch_picks_what_fits_and_trains(tiny_model_dir, tmp_path, capsys):
    from finetune import plan, train

    out = tmp_path / "out"
    memory = 1.0
    cfg = config.validate(raw_config(tiny_model_dir, out, micro_batch_size="auto"))
    train.run(cfg, memory_gib=memory)
    chosen = yaml.safe_load((out / "config.yml").read_text())["micro_batch_size"]
    from finetune.plan.estimate import AUTO_LARGEST

    assert isinstance(chosen, int) and 1 <= chosen < AUTO_LARGEST
    assert f"micro_batch_size: auto -> {chosen}" in capsys.readouterr().err
    device = plan.cpu_device(memory)
    assert plan.estimate(cfg, device, micro_batch=chosen).fits
    assert not plan.estimate(cfg, device, micro_batch=chosen * 2).fits


def test_auto_with_batch_size_is_refused(tiny_model_dir, tmp_path):
    raw = raw_config(tiny_model_dir, tmp_path / "out", micro_batch_size="auto", batch_size=8)
    with pytest.raises(config.ConfigError, match="batch_size: needs a number for micro_batch_size"):
        config.validate(raw)


def test_tight_ram_is_judged_by_the_fast_heaps_worst_case(tiny_model_dir, tmp_path):
    """The fast heap's RSS was measured at up to CPU_FAST_HEAP_FACTOR x the planned tensors: the compact heap
    is chosen exactly when that could exceed the machine's RAM."""
    from finetune import plan
    from finetune.train.fit_check import tight_ram

    cfg = config.validate(raw_config(tiny_model_dir, tmp_path / "out"))
    est = plan.estimate(cfg, plan.cpu_device(1000.0))
    runtime = est.parts["runtime"]
    worst = runtime + (est.compact_peak_gib - runtime) * plan.devices.CPU_FAST_HEAP_FACTOR
    assert not tight_ram(est)
    tight = plan.estimate(cfg, plan.cpu_device(worst * 0.99))
    assert tight_ram(tight) and tight.cpu_heap == "compact"
    assert not tight_ram(plan.estimate(cfg, plan.cpu_device(worst * 1.01)))
    # the plan predicts the heap train keeps: the fast one holds freed activations beyond the compact peak
    assert est.cpu_heap == "fast" and est.peak_gib > est.compact_peak_gib == tight.peak_gib
    assert "fast_heap_kept" not in tight.parts


def test_heap_is_chosen_for_the_longest_batch_the_data_makes(tiny_model_dir, tmp_path):
    """Rows far shorter than sequence_len: the fast heap's worst case is judged for micro_batch_size x the
    longest row, so a RAM that is tight only for full-length batches keeps the fast heap."""
    import datasets

    from finetune import data, plan
    from finetune.train.fit_check import judge

    cfg = config.validate(raw_config(tiny_model_dir, tmp_path / "out", sequence_len=4096, micro_batch_size=8))
    rows = datasets.Dataset.from_dict({"input_ids": [[1] * 30, [1] * 64, [1] * 12]})
    # the lengths the judgement reads, counted by hand; a selection's own rows
    stats, selected = data.length_stats(cfg, table=rows), data.length_stats(cfg, table=rows.select([0, 2]))
    assert {k: stats[k] for k in ("rows", "tokens", "longest")} == {"rows": 3, "tokens": 106, "longest": 64}
    assert list(stats["lengths"]) == [30, 64, 12] and list(selected["lengths"]) == [30, 12]
    full = plan.estimate(cfg, plan.cpu_device(1000.0))
    short = plan.estimate(
        cfg.model_copy(update={"sequence_len": 64, "micro_batch_size": 3}), plan.cpu_device(1000.0)
    )
    memory = (full.fast_heap_worst_gib + short.fast_heap_worst_gib) / 2  # tight for 4096-token rows only
    checked = plan.estimate(cfg, plan.cpu_device(memory))  # the fit check's plan: full-length rows
    predicted: dict = {}
    assert judge(cfg, rows, checked, True, predicted, []) == "fast" and predicted["cpu_heap"] == "fast"
    long_rows = datasets.Dataset.from_dict({"input_ids": [[1] * 4096] * 8})  # a full micro-batch of them
    notes: list[str] = []
    assert judge(cfg, long_rows, checked, False, predicted, notes) == "compact"
    assert any("RAM is tight" in n for n in notes)
    # token-budget batches (sample_packing on CPU) fill micro_batch_size x sequence_len with short rows too
    packed = cfg.model_copy(update={"sample_packing": True})
    many = datasets.Dataset.from_dict({"input_ids": [[1] * 64] * 600})
    assert judge(packed, many, checked, False, {}, []) == "compact"
    assert judge(cfg, long_rows, None, True, {}, []) == "fast"  # no plan (smoke run, unreadable base): fast


def test_only_the_cli_training_process_sets_the_cpu_heap(tiny_model_dir, tmp_path, monkeypatch, write_config):
    """mallopt changes a process for its lifetime: train.run called from a notebook or a test leaves glibc's
    heap alone (all_results says `default`), and so does --smoke; `finetune train` asks for it
    (tune_cpu_heap, test_no_fit_check_runs_and_records_the_prediction sees it compact through the CLI)."""
    from finetune import train
    from finetune.model import compute

    calls = []
    monkeypatch.setattr(compute, "cpu_heap", lambda compact=False: calls.append(compact) or True)
    out = tmp_path / "out"
    cfg = config.load(write_config(raw_config(tiny_model_dir, out, max_steps=1)))
    train.run(cfg)
    assert calls == [] and json.loads((out / "all_results.json").read_text())["cpu_heap"] == "default"
    train.run(cfg, smoke=True, tune_cpu_heap=True)
    assert calls == []
    train.run(cfg, overwrite=True, tune_cpu_heap=True)
    assert calls == [False] and json.loads((out / "all_results.json").read_text())["cpu_heap"] == "fast"
