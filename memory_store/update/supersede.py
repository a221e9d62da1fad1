"""Supersession: a new piece replaces the stored pieces of the same prompt, except that several
unlearning requests of one prompt with different targets coexist."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from memory_store.codebook.store import PieceRecord
from memory_store.types import PieceKind, PieceSpec


def norm_prompt(prompt: str) -> str:
    """The form prompts are compared in: runs of whitespace collapsed, case folded."""
    return " ".join(prompt.split()).casefold()


def _replaces(new_kind: PieceKind, new_target: str, old_kind: PieceKind, old_target: str) -> bool:
    both_unlearn = old_kind == new_kind == PieceKind.UNLEARN
    return not (both_unlearn and old_target != new_target)


def superseded(stored: Iterable[PieceRecord], specs: Sequence[PieceSpec]) -> list[str]:
    """Ids of the stored pieces that ``specs`` replace."""
    by_prompt: dict[str, list[PieceRecord]] = {}
    for p in stored:
        by_prompt.setdefault(norm_prompt(p.prompt), []).append(p)
    out: list[str] = []
    for spec in specs:
        for old in by_prompt.get(norm_prompt(spec.prompt), []):
            if old.id not in out and _replaces(spec.kind, spec.target, old.kind, old.target):
                out.append(old.id)
    return out


def deduplicate(specs: Sequence[PieceSpec]) -> list[int]:
    """Indices of the pieces of one batch that no later piece of the same batch replaces:
    within a batch, as across batches, the later request of a prompt wins (an unlearning
    request removes an edit of its prompt, an edit an unlearning request)."""
    kept: list[int] = []
    later: dict[str, list[PieceSpec]] = {}
    for i in range(len(specs) - 1, -1, -1):
        spec = specs[i]
        same = later.setdefault(norm_prompt(spec.prompt), [])
        if not any(_replaces(s.kind, s.target, spec.kind, spec.target) for s in same):
            kept.append(i)
            same.append(spec)
    return kept[::-1]
