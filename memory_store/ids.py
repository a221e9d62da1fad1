"""Identifiers owned by the codebook. Callers' ids are checked against these forms before use."""

from __future__ import annotations

import re

_MEMORY = re.compile(r"^mem_[0-9]{6,12}$")
_PIECE = re.compile(r"^pc_[0-9]{6,12}$")


def memory_id(n: int) -> str:
    return f"mem_{n:06d}"


def piece_id(n: int) -> str:
    return f"pc_{n:06d}"


def is_memory_id(value: str) -> bool:
    # fullmatch: with match, "$" also matches before a trailing newline ("mem_000001\n")
    return isinstance(value, str) and bool(_MEMORY.fullmatch(value))


def is_piece_id(value: str) -> bool:
    return isinstance(value, str) and bool(_PIECE.fullmatch(value))


def id_number(value: str) -> int:
    """The number of a memory or piece id (``"mem_000042"`` -> 42)."""
    if not (is_memory_id(value) or is_piece_id(value)):
        raise ValueError(f"not a codebook id: {value!r}")
    return int(value.rpartition("_")[2])
