"""Every path of finetune that only a CUDA GPU runs, checked in one command on a lent GPU machine.

    python benchmarks/gpu_check.py --report gpu_check.md       # on the GPU: about 8 minutes on one H100
    python benchmarks/gpu_check.py --dry-run                   # anywhere (CPU): what it would run, configs validated

Nothing outside a lent GPU machine may be reachable: the models are built from config.json with random weights,
as gpu_qlora.py does (--model-8b PATH: a local folder of real Llama-3.1-8B weights for the 8B rows). Where the
report has to come back from that machine, write it under the folder that is copied back, and allow the command
about 9 minutes (--budget plus start-up).

NOT YET RUN ON A GPU: written on 2026-12-07 when no GPU was lent; only `--dry-run`, the harness and the one-GPU
FSDP2 commands have run (on CPU, in tests/plan/test_gpu_check.py). Expect the first GPU run to find wrong guesses in the checks themselves.

Each check runs real `finetune` commands (or the existing benchmark scripts: gpu_qlora.py for the 8B
tokens/s rows of BENCHMARKS.md, plan_accuracy.py for its GPU mode) as subprocesses, each with its own timeout,
all inside one global budget (--budget seconds: a check that would start with too little left is skipped). Each
check's row (ok + what it saw / failed + the last error line / skipped + why) is appended to the Markdown
report as soon as the check ends, so a run cut off from outside still reports every check it finished. The
functional checks train the tiny model (models/tiny's shape) for a few steps; only the 8B rows use a big model.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_checks  # noqa: E402 - the checks themselves, beside this script

FINETUNE = [sys.executable, "-m", "finetune.cli"]


def gpus() -> int:
    """CUDA devices, asked of nvidia-smi so this process never holds a CUDA context of its own."""
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(line.startswith("GPU ") for line in out.splitlines())


def environment() -> str:
    """The report's header: GPU, driver and library versions (a subprocess: imports torch with CUDA)."""
    code = (
        "import torch, transformers, peft, trl, bitsandbytes as b, platform; "
        'print(f\'{torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA"}, torch {torch.__version__} '
        "(CUDA {torch.version.cuda}), transformers {transformers.__version__}, peft {peft.__version__}, "
        "trl {trl.__version__}, bitsandbytes {b.__version__}, python {platform.python_version()}')"
    )
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return "environment: timed out reading versions"
    return proc.stdout.strip() or last_line(proc.stderr)


def last_line(text: str) -> str:
    """The last line that says something (the error, in a traceback's output), shortened for a table cell."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "Error" in ln or "error:" in ln or ln.startswith(("FAIL", "finetune:"))]
    line = (errors or lines or ["(no output)"])[-1]
    return line.replace("|", "/")[:300]


def run_command(argv: list[str], seconds: float, log: Path, env: dict) -> tuple[int | None, str]:
    """(exit code or None on timeout, output). Its own process group: a timeout ends torchrun's children too."""
    with log.open("a") as sink:
        sink.write(f"$ {' '.join(argv)}\n")
        sink.flush()
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)  # fmt: skip
        try:
            output, _ = proc.communicate(timeout=max(1.0, seconds))
            code = proc.returncode
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
            code = None
        sink.write(output + f"\n[exit {code}]\n")
    return code, output


class Report:
    """The Markdown report, one row appended (and flushed to disk) per finished check."""

    def __init__(self, path: Path | None, header: str):
        self.path = path
        self.emit(
            f"# finetune GPU check\n\n{header}\n\n| check | what | result | detail | seconds |\n|---|---|---|---|---|"
        )

    def emit(self, text: str) -> None:
        print(text, flush=True)
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(text + "\n")
                f.flush()
                os.fsync(f.fileno())

    def row(self, check, result: str, detail: str, seconds: float) -> None:
        self.emit(f"| {check.name} | {check.what} | {result} | {detail.replace('|', '/')} | {seconds:.0f} |")


def run_check(check, ctx: gpu_checks.Context, deadline: float, report: Report) -> str:
    start = time.time()
    left = deadline - start
    configs, commands = check.plan(ctx)  # writes the configs (dry_run validates the same files)
    reason = check.skip(ctx)
    if reason is None and left < check.least:
        reason = f"global budget: {left:.0f} s left, the check needs about {check.least} s"
    if reason is not None:
        report.row(check, "skipped", reason, 0)
        return "skipped"
    folder = ctx.workdir / check.name
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "log.txt"
    stop = min(deadline, start + check.timeout)
    outputs = []
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    for argv, expected in commands:
        code, output = run_command(argv, stop - time.time(), log, env)
        outputs.append(output)
        if code is None:
            report.row(check, "failed", f"timed out after {time.time() - start:.0f} s: {last_line(output)}",
                       time.time() - start)  # fmt: skip
            return "failed"
        if code != expected:
            report.row(check, "failed", f"exit {code}: {last_line(output)}", time.time() - start)
            return "failed"
    try:
        detail = check.verify(ctx, outputs)
    except (AssertionError, KeyError, ValueError, OSError, IndexError) as exc:
        report.row(check, "failed", f"{type(exc).__name__}: {exc}"[:300], time.time() - start)
        return "failed"
    report.row(check, "ok", detail, time.time() - start)
    return "ok"


def dry_run(ctx: gpu_checks.Context, checks=gpu_checks.CHECKS) -> list[tuple[str, str]]:
    """Each check's commands, and every config it uses validated by finetune's config.load (no CUDA needed).
    Returns (check, config) pairs validated; raises ConfigError naming the check when one is invalid."""
    from finetune import config

    validated = []
    for check in checks:
        print(f"\n{check.name} ({check.timeout} s): {check.what}")
        configs, commands = check.plan(ctx)
        for argv, expected in commands:
            print(f"  $ {' '.join(argv)}" + (f"   # expects exit {expected}" if expected else ""))
        for path, overrides in configs:
            try:
                config.load(path, overrides)
            except config.ConfigError as exc:
                raise config.ConfigError([f"{check.name}: {p}" for p in exc.problems]) from None
            validated.append((check.name, str(path)))
            print(f"  config ok: {path}" + (f" --set {' --set '.join(overrides)}" if overrides else ""))
    return validated


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--report", type=Path, help="Markdown report, written row by row (default: stdout only)"
    )
    parser.add_argument("--budget", type=float, default=470, help="seconds for all checks together")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/finetune-gpu-check"))
    parser.add_argument("--only", default="", help="run only the checks whose name contains this")
    parser.add_argument("--dry-run", action="store_true", help="list the checks and validate their configs")
    parser.add_argument(
        "--model-8b",
        type=Path,
        help="local folder of real Llama-3.1-8B weights for the 8B rows (default: random weights of its shape, "
        "built on the GPU: a lent machine reaches nothing outside it)",
    )
    args = parser.parse_args()
    deadline = time.time() + args.budget
    args.workdir.mkdir(parents=True, exist_ok=True)
    ctx = gpu_checks.Context(args.workdir, 0 if args.dry_run else gpus(), args.dry_run, args.model_8b)
    gpu_checks.prepare(ctx)
    if args.dry_run:
        validated = dry_run(ctx)
        print(f"\ndry run: {len(gpu_checks.CHECKS)} checks, {len(validated)} configs valid")
        return 0
    if args.report is not None:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text("")
    flash = "flash_attn importable" if importlib.util.find_spec("flash_attn") else "flash_attn not installed"
    report = Report(args.report, f"{environment()}; {ctx.gpus} GPU(s); {flash}; budget {args.budget:.0f} s; "
                                 f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")  # fmt: skip
    results = [run_check(c, ctx, deadline, report) for c in gpu_checks.CHECKS if args.only in c.name]
    report.emit(f"\n{results.count('ok')} ok, {results.count('failed')} failed, {results.count('skipped')} "
                f"skipped; logs under {args.workdir}/<check>/log.txt")  # fmt: skip
    extra = ctx.workdir / "plan-accuracy" / "log.txt"
    if extra.is_file():  # plan_accuracy.py's own GPU table
        table = [ln for ln in extra.read_text().splitlines() if ln.startswith("|")]
        report.emit("\n## plan_accuracy.py on this GPU\n\n" + "\n".join(table))
    return 1 if "failed" in results else 0


if __name__ == "__main__":
    raise SystemExit(main())
