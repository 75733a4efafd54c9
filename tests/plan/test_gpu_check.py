"""benchmarks/gpu_check.py without a GPU: its dry run lists every check and validates every config the checks
train (through finetune's config.load), and its harness reports each check's row as it ends — ok, failed with
the last error line, timed out, skipped — inside one global budget. The GPU run itself has not happened yet."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from finetune import config

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import gpu_check  # noqa: E402
import gpu_checks  # noqa: E402


def test_dry_run_lists_every_check_and_validates_each_config(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu_check.py"), "--dry-run", "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    names = [c.name for c in gpu_checks.CHECKS]
    assert {"qlora-bf16", "fit-check", "liger", "offload", "flash-varlen", "flash-flatten", "sdpa-flatten", "fsdp", "grpo", "torch-compile",
            "plan-accuracy", "8b-qlora", "8b-lora"} == set(names)  # fmt: skip
    for name in names:
        assert f"\n{name} (" in proc.stdout, name
    validated = [line for line in proc.stdout.splitlines() if "config ok:" in line]
    assert len(validated) == 16  # offload, sdpa-flatten and fsdp use two configs each, every other check one
    assert f"dry run: {len(names)} checks, 16 configs valid" in proc.stdout
    # the 8B rows validate the very config gpu_qlora.py trains, and plan_accuracy.py's own config
    assert "check-8b-qlora-none-gctrue-p1.yaml" in proc.stdout and "tiny-b8-s512-4bit-gc.yaml" in proc.stdout
    assert "examples/grpo.yaml --set base_model=" in proc.stdout
    # one lent GPU: FSDP2 as a single rank (finetune alone trains one process without FSDP), saved, resumed
    fsdp = [ln for ln in proc.stdout.splitlines() if "fsdp_one_rank.py train" in ln]
    assert len(fsdp) == 2 and "--overwrite" in fsdp[0] and "--resume --set max_steps=6" in fsdp[1]


def test_the_8b_rows_train_a_local_folder_when_given_one(tmp_path):
    """No 8B weights are reachable from a lent machine: by default the rows build random ones of the shape;
    --model-8b PATH hands a local folder of real weights to gpu_qlora.py (and its config)."""
    import yaml

    real = tmp_path / "Llama-3.1-8B"
    for model_8b, expected in ((None, tmp_path / "bench" / "llama-8b-random"), (real, real)):
        ctx = gpu_checks.Context(tmp_path, gpus=1, dry_run=False, model_8b=model_8b)
        configs, [(argv, _)] = gpu_checks.plan_bench("qlora")(ctx)
        assert ("--base-model" in argv) == (model_8b is not None)
        written = yaml.safe_load(next((tmp_path / "bench").glob("check-8b-qlora-*.yaml")).read_text())
        assert written["base_model"] == str(expected) and written["load_in_4bit"] is True


def test_dry_run_names_the_check_whose_config_finetune_refuses(tmp_path):
    ctx = gpu_checks.Context(tmp_path, gpus=0, dry_run=True)
    gpu_checks.prepare(ctx)
    bad = gpu_checks.Check("typo", "a misspelt key", 10, 1, gpu_checks.single("typo", lora_alhpa=16), None)
    with pytest.raises(config.ConfigError) as exc:
        gpu_check.dry_run(ctx, [gpu_checks.CHECKS[0], bad])
    (problem,) = exc.value.problems
    assert problem.startswith("typo: ") and "lora_alhpa" in problem and "lora_alpha" in problem


def python(code: str):
    return [sys.executable, "-c", code], 0


def fake(name: str, commands, verify=lambda ctx, outputs: "fine", timeout=30, skip=lambda ctx: None):
    return gpu_checks.Check(name, f"{name} check", timeout, 1, lambda ctx: ([], commands), verify, skip)


def test_each_row_reaches_the_report_as_its_check_ends(tmp_path):
    ctx = gpu_checks.Context(tmp_path, gpus=1, dry_run=False)
    report_path = tmp_path / "report.md"
    report = gpu_check.Report(report_path, "header")
    checks = [
        fake("good", [python("print('x')")], verify=lambda ctx, outputs: f"saw {outputs[0].strip()}"),
        fake("crash", [python("print('step 1'); raise ValueError('CUDA error: no kernel image')")]),
        fake("slow", [python("import time; print('started', flush=True); time.sleep(60)")], timeout=2),
        fake("absent", [python("print(1)")], skip=lambda ctx: "flash_attn is not installed"),
        fake("wrong", [python("print(1)")], verify=lambda ctx, outputs: (_ for _ in ()).throw(AssertionError("loss nan"))),
        fake("refusal", [([sys.executable, "-c", "raise SystemExit(2)"], 2)]),
    ]  # fmt: skip
    deadline = time.time() + 60
    seen = []
    for check in checks:
        seen.append(gpu_check.run_check(check, ctx, deadline, report))
        rows = [ln for ln in report_path.read_text().splitlines() if ln.startswith(f"| {check.name} |")]
        assert len(rows) == 1, check.name  # written when the check ended, before the next began
    assert seen == ["ok", "failed", "failed", "skipped", "failed", "ok"]
    text = report_path.read_text()
    assert "| good | good check | ok | saw x |" in text
    assert "| crash | crash check | failed | exit 1: ValueError: CUDA error: no kernel image |" in text
    assert "| slow | slow check | failed | timed out after 2 s: started |" in text
    assert "| absent | absent check | skipped | flash_attn is not installed | 0 |" in text
    assert "| wrong | wrong check | failed | AssertionError: loss nan |" in text
    assert "[exit 1]" in (tmp_path / "crash" / "log.txt").read_text()  # the whole output stays in the log


def test_a_check_that_would_start_past_the_budget_is_skipped(tmp_path):
    ctx = gpu_checks.Context(tmp_path, gpus=1, dry_run=False)
    report = gpu_check.Report(tmp_path / "report.md", "header")
    check = gpu_checks.Check("late", "late check", 100, 50, lambda ctx: ([], [python("print(1)")]), None)
    assert gpu_check.run_check(check, ctx, time.time() + 10, report) == "skipped"
    assert "global budget: 10 s left, the check needs about 50 s" in (tmp_path / "report.md").read_text()
    assert not (tmp_path / "late" / "log.txt").exists()


@pytest.mark.slow
def test_the_one_gpu_fsdp_check_trains_one_fsdp2_rank_and_resumes_on_cpu_too(tmp_path):
    """The fsdp check on a one-GPU machine: fsdp_one_rank.py under torchrun makes a single FSDP2 rank (finetune
    alone trains one process without FSDP). Its commands run here on CPU (checkpoints sharded there: the
    FULL_STATE_DICT file is the GPU run's to see): FSDP engaged, the run resumed from its step-4 checkpoint."""
    import json

    import yaml

    from launching import free_port

    ctx = gpu_checks.Context(tmp_path, gpus=1, dry_run=False)
    gpu_checks.prepare(ctx)
    configs, commands = gpu_checks.plan_fsdp(ctx)
    path = configs[0][0]
    cfg = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**cfg, "bf16": False, "micro_batch_size": 2}))  # CPU: fp32, small batches
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    env = {k: v for k, v in env.items() if not k.startswith(("RANK", "LOCAL_", "WORLD_", "MASTER_"))}
    outputs = []
    for argv, expected in commands:
        assert "fsdp_one_rank.py" in " ".join(argv)
        argv = [str(free_port()) if a == "29611" else a for a in argv]
        code, output = gpu_check.run_command(argv, 600, tmp_path / "log.txt", env)
        assert code == expected, output[-3000:]
        outputs.append(output)
    out = gpu_checks.out(ctx, "fsdp")
    results = json.loads((out / "all_results.json").read_text())
    assert (results["distributed_type"], results["world_size"]) == ("fsdp", 1)
    assert "one process, nothing to shard" not in outputs[0]
    state = json.loads((out / "trainer_state.json").read_text())
    assert [e["step"] for e in state["log_history"] if "loss" in e] == [1, 2, 3, 4, 5, 6]
    assert "checkpoint-4" in outputs[1]  # resumed from the first run's last checkpoint
