"""Durable file writes: a file appears whole under its name or not at all, and survives a
crash once written (temp file, fsync, rename, fsync of the folder)."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import save_file


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


def save_safetensors(tensors: dict, path: Path) -> None:
    """``safetensors.torch.save_file``, with its I/O failures (a full disk) raised as the
    ``OSError`` they are, so that callers name the disk instead of reporting a crash."""
    try:
        save_file(tensors, str(path))
    except SafetensorError as exc:
        message = str(exc)
        if "os error" not in message and "I/O error" not in message:
            raise
        code = errno.ENOSPC if "No space left" in message else errno.EIO
        raise OSError(code, f"{os.strerror(code)}: {path}") from exc
