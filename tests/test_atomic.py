"""The shared atomic writer: replaces on success, leaves the old file and no temporary file on failure."""

from __future__ import annotations

from pathlib import Path

import pytest

from visionad_multicore.atomic import atomic_path, atomic_write_text


def test_write_creates_folder_and_mode_0644(tmp_path: Path) -> None:
    target = atomic_write_text(tmp_path / "a" / "b.txt", "hello")
    assert target.read_text() == "hello"
    assert target.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in target.parent.iterdir()] == ["b.txt"]


def test_failure_keeps_the_old_file_and_removes_the_temporary(tmp_path: Path) -> None:
    target = atomic_write_text(tmp_path / "x.json", "old")
    with pytest.raises(RuntimeError), atomic_path(target, suffix=".npy") as tmp:
        assert tmp.suffix == ".npy" and tmp.parent == tmp_path
        tmp.write_text("half")
        raise RuntimeError("writer failed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]
