"""Atomic file writes: readers of the shared store never see a half-written file."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success, rename it onto ``path``.

    The temporary file is in the same directory, so the rename is atomic; if the body raises, it is removed
    and ``path`` keeps its old content. Example::

        with atomic_path(target) as tmp:
            table.to_parquet(tmp)
    """
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` through a temporary file and a rename."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)


SETTLED_S = 2.0
"""A file or directory changed longer ago than this shows any later change in its ``st_mtime_ns``."""


def settled(status: os.stat_result) -> bool:
    """Whether what ``status`` describes may be cached against its stat (git's rule against racy timestamps).

    A file system stamps changes from a coarse clock: two changes within one tick can leave the same mtime.
    Once the last change is :data:`SETTLED_S` old, any later one lands on a later tick, so an unchanged
    ``(st_ino, st_mtime_ns)`` means unchanged content.
    """
    return time.time() - status.st_mtime > SETTLED_S
