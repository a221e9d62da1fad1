"""Durable file writes: a file appears whole under its name or not at all, and survives a
crash once written (temp file, fsync, rename, fsync of the folder)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` a temporary file next to ``path``, fsync it, rename it to ``path``."""
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    write(tmp)
    fsync_file(tmp)
    os.replace(tmp, path)
