"""The layer rules (pyproject's [tool.importlinter]) hold, and the linter really refuses a forbidden import:
a copy of the package with one planted violation fails the check that the real tree passes."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")

pytestmark = pytest.mark.skipif(not Path(LINT).exists(), reason="import-linter is not installed (dev extra)")


def lint(src: Path) -> subprocess.CompletedProcess:
    """lint-imports on the package under `src`, with the project's contracts."""
    env = {"PATH": str(Path(sys.executable).parent), "PYTHONPATH": str(src)}
    return subprocess.run(
        [LINT, "--no-cache", str(ROOT / "pyproject.toml")], cwd=src, env=env, capture_output=True, text=True
    )


def planted(tmp_path: Path, module: str, line: str) -> Path:
    """A copy of src/ with `line` added at the end of `module` (a path under src/finetune)."""
    src = tmp_path / "src"
    shutil.copytree(ROOT / "src", src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    target = src / "finetune" / module
    target.write_text(target.read_text() + f"\n\ndef _planted():\n    {line}\n")
    return src


def test_the_tree_keeps_every_contract():
    result = lint(ROOT / "src")
    assert result.returncode == 0, result.stdout[-3000:]
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        # a lower stage reaching up (inside a function counts too)
        ("data/formats.py", "from finetune.model import load", "Pipeline layers"),
        # data and model are independent stages: the recipe joins them
        ("data/formats.py", "from finetune.model import generation", "Pipeline layers"),
        ("model/adapter.py", "from finetune.data import formats", "Pipeline layers"),
        # the leaves stay independent of each other
        ("scoring.py", "from finetune import hub", "The small leaves do not depend on each other"),
        # config must stay free of torch so `finetune validate` is fast
        ("config/schema.py", "import torch", "config imports no torch"),
        # the card is built from saved files only
        (
            "outputs/card/usage.py",
            "from finetune.model import generation",
            "The card is built from saved files",
        ),
        # the Studio sits at the top beside cli: no stage imports it, and it never imports cli
        ("train/callbacks.py", "from finetune import studio", "Pipeline layers"),
        ("studio/jobs.py", "from finetune import cli", "Pipeline layers"),
        # two modules of one stage importing each other
        ("data/rows.py", "from finetune.data import formats", "No cycles"),
    ],
)
def test_a_planted_violation_is_refused(tmp_path, module, line, broken):
    result = lint(planted(tmp_path, module, line))
    assert result.returncode != 0
    assert f"{broken}" in result.stdout and "BROKEN" in result.stdout
