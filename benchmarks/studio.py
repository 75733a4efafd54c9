"""The Studio's start time and the time to list a root of 500 runs (targets: under 2 s and under 1 s).

    python benchmarks/studio.py [--runs 500] [--repeat 3]

Writes 500 run folders as training leaves them (config.yml, status.json, metrics.jsonl of 200 logged steps,
trainer_state.json and all_results.json for most; some interrupted with a checkpoint, a few corrupt), then
starts `finetune studio` on them, a fresh process each time: start = from launch until it answers; list = the
first GET /api/runs (cold: every folder read) and a second one (the Studio's cache). Also says whether the
Studio had imported torch (it must not have).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from studio_server import free_port  # noqa: E402

CONFIG = (REPO / "examples" / "quickstart.yaml").read_text()


def write_runs(root: Path, count: int) -> None:
    for i in range(count):
        run = root / "outputs" / f"run-{i:03d}"
        run.mkdir(parents=True)
        (run / "config.yml").write_text(CONFIG.replace("outputs/quickstart", f"outputs/run-{i:03d}"))
        lines = [json.dumps({"loss": 2.0 - s / 200, "learning_rate": 0.003, "step": s, "time": 1e9 + s})
                 for s in range(1, 201)]  # fmt: skip
        (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
        (run / "status.json").write_text(json.dumps({"pid": 1, "state": "ended", "step": 200, "max_steps": 200,
                                                     "started": 1e9, "heartbeat": 1e9 + 200}))  # fmt: skip
        if i % 10 == 9:
            (run / "checkpoint-100").mkdir()  # interrupted
        elif i % 50 == 49:
            (run / "all_results.json").write_text("{broken")  # corrupt
        else:
            (run / "trainer_state.json").write_text(json.dumps({"global_step": 200, "log_history": []}))
            (run / "all_results.json").write_text(
                json.dumps(
                    {
                        "global_step": 200,
                        "final_train_loss": 1.0,
                        "train_runtime": 200.0,
                        "peak_cpu_memory_mb": 900.0,
                    }
                )
            )


def once(root: Path) -> tuple[float, float, float, bool, int]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "finetune.cli", "studio", "--root", str(root), "--port", str(port)]
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                urllib.request.urlopen(url + "/api/health", timeout=1)
                break
            except OSError:
                time.sleep(0.01)
        started = time.perf_counter() - start
        t = time.perf_counter()
        rows = json.loads(urllib.request.urlopen(url + "/api/runs").read())["runs"]
        cold = time.perf_counter() - t
        t = time.perf_counter()
        urllib.request.urlopen(url + "/api/runs").read()
        warm = time.perf_counter() - t
        torch = json.loads(urllib.request.urlopen(url + "/api/health").read())["torch_loaded"]
        return started, cold, warm, torch, len(rows)
    finally:
        proc.terminate()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_runs(root, args.runs)
        results = [once(root) for _ in range(args.repeat)]
    starts, colds, warms, torch, counts = zip(*results, strict=True)
    print(f"runs listed: {counts[0]} (of {args.runs} folders); torch imported by the Studio: {any(torch)}")
    print(
        f"start (launch -> first answer): median {statistics.median(starts):.2f} s, best {min(starts):.2f} s"
    )
    print(
        f"list {args.runs} runs, first look:  median {statistics.median(colds):.3f} s, best {min(colds):.3f} s"
    )
    print(
        f"list {args.runs} runs, again:       median {statistics.median(warms):.3f} s, best {min(warms):.3f} s"
    )


if __name__ == "__main__":
    main()
