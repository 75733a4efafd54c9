"""Atomic writes and output-folder checks."""

from __future__ import annotations

import os

import pytest

from finetune import files
from finetune.errors import UserError


def test_atomic_write_replaces_whole_file_with_normal_permissions(tmp_path):
    path = tmp_path / "sub" / "a.json"
    files.atomic_write_json(path, {"a": 1})
    files.atomic_write_text(path, "new")
    assert path.read_text() == "new"
    assert [p.name for p in path.parent.iterdir()] == ["a.json"]  # no temp files left
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask


def test_atomic_dir_gives_the_folder_normal_permissions(tmp_path):
    """mkdtemp makes 0700; a merged model or export must be readable as any folder the user makes."""
    old = os.umask(0o022)
    try:
        with files.atomic_dir(tmp_path / "merged") as tmp:
            (tmp / "config.json").write_text("{}")
    finally:
        os.umask(old)
    assert (tmp_path / "merged").stat().st_mode & 0o777 == 0o755


def test_atomic_dir_leaves_nothing_on_failure_and_refuses_non_empty(tmp_path):
    final = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with files.atomic_dir(final) as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("crash while writing")
    assert not final.exists() and list(tmp_path.iterdir()) == []
    with files.atomic_dir(final) as tmp:
        (tmp / "done.txt").write_text("ok")
    assert (final / "done.txt").read_text() == "ok"
    with pytest.raises(UserError, match="already exists and is not empty"):
        with files.atomic_dir(final):
            pass
    with files.atomic_dir(final, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("v2")
    assert [p.name for p in final.iterdir()] == ["new.txt"]


def test_check_output_dir(tmp_path):
    files.check_output_dir(tmp_path / "new", overwrite=False, resume=False)
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("x")
    with pytest.raises(UserError, match="pass --resume to continue it, --overwrite to start again"):
        files.check_output_dir(tmp_path / "used", overwrite=False, resume=False)
    files.check_output_dir(tmp_path / "used", overwrite=True, resume=False)
    files.check_output_dir(tmp_path / "used", overwrite=False, resume=True)
