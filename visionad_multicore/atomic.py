"""Atomic file writes: write a temporary file beside the target, then ``os.replace`` it into place.

Readers never see half a file, and a failed write leaves the previous file untouched. Every module that
writes results, models, caches or pictures goes through here.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _file_mode(target: Path) -> int:
    """Mode for a replacement file: the existing file's, else 0o644 (mkstemp's 0o600 would hide results)."""
    return target.stat().st_mode & 0o7777 if target.exists() else 0o644


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds it replaces ``path``.

    Args:
        path: The file to (re)place; its folder is created if missing.
        suffix: Suffix of the temporary file, for writers that infer a format from it (``.npy``, ``.png``).

    The replacement keeps the old file's mode (0o644 for a new file). On an exception the temporary file is
    removed and ``path`` is left as it was.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _file_mode(target))
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike[str], payload: bytes) -> Path:
    """Write ``payload`` to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(payload)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """UTF-8 text version of :func:`atomic_write_bytes`."""
    return atomic_write_bytes(path, text.encode("utf-8"))
