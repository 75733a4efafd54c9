"""Names in the source explain themselves: a file a comment names exists, and a module is imported under its own
name (issue 28). Both go stale silently when a file is renamed, so they are checked here, over all of src/.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "finetune"

# Files of other projects that comments name on purpose, and made-up paths in examples.
EXTERNAL = {
    "utils/freeze.py": "axolotl",
    "core/builders/base.py": "axolotl",
    "convert_hf_to_gguf.py": "llama.cpp",
    "deepspeed/comm/torch.py": "DeepSpeed",
    "pkg/mod.py": "an example reward module",
    "folder/a/b.py": "an example reward module",
    "folder/a/b/__init__.py": "an example reward module",
}

PY_NAME = re.compile(r"(?<![\w./-])((?:[\w-]+/)*[\w-]+\.py)\b")
MODULE_PATH = re.compile(r"\bfinetune((?:\.[a-z_][a-z0-9_]*)+)")


def sources() -> list[tuple[str, Path]]:
    return [(p.relative_to(SRC).as_posix(), p) for p in sorted(SRC.rglob("*.py"))]


def is_module(dotted: str) -> bool:
    base = SRC.parent.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def stale_file_names() -> set[tuple[str, str]]:
    """Every `x.py` / `a/b.py` a comment or docstring names that is no file of the package (nor of the repo)."""
    files = [rel for rel, _ in sources()]
    repo = SRC.parents[1]
    stale = set()
    for rel, path in sources():
        for name in PY_NAME.findall(path.read_text(encoding="utf-8")):
            if name in EXTERNAL or (repo / name).is_file() or (SRC.parent / name).is_file():
                continue
            if not any(f == name or f.endswith("/" + name) for f in files):
                stale.add((rel, name))
    return stale


def test_every_file_a_comment_names_exists():
    stale = stale_file_names()
    assert stale == set(), "rename these to the file that holds the code now"


def test_every_finetune_module_path_in_the_source_exists():
    """`finetune.a.b` (or `finetune.a.b.name`) in a comment names a module that is there."""
    stale = []
    for rel, path in sources():
        for tail in MODULE_PATH.findall(path.read_text(encoding="utf-8")):
            dotted = "finetune" + tail
            if not (is_module(dotted) or is_module(dotted.rsplit(".", 1)[0])):
                stale.append(f"{rel}: {dotted}")
    assert stale == []


def module_aliases() -> set[tuple[str, str]]:
    """`import finetune.x as y` and `from finetune.a import x as y` where x is a module of ours (a function
    imported under a clearer name is fine)."""
    found = set()
    for rel, path in sources():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                pairs = [(a.name, a.asname) for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                pairs = [(f"{node.module}.{a.name}", a.asname) for a in node.names]
            else:
                continue
            for dotted, alias in pairs:
                if dotted.startswith("finetune") and alias and alias != dotted.rsplit(".", 1)[-1]:
                    if is_module(dotted):
                        found.add((rel, f"{dotted} as {alias}"))
    return found


def test_no_module_of_ours_is_imported_under_another_name():
    found = module_aliases()
    assert found == set(), "import the module under its own name (or the names it defines)"


def test_the_checks_see_what_they_look_for(tmp_path):
    """The patterns match the shapes they are meant to catch (a check that matches nothing passes forever)."""
    assert PY_NAME.findall("see config_schema.py and data/chat.py, not x.pyc") == [
        "config_schema.py",
        "data/chat.py",
    ]
    assert is_module("finetune.train.batching") and not is_module("finetune.train.rl")
    assert ("train/__init__.py", "train.py") not in stale_file_names()
