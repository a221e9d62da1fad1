"""Knowledge pieces: list, inspect, and revert one (``DELETE`` runs as a job).

What was unlearned is itself sensitive: unlearn pieces (prompt, target, paraphrases) are
shown to admin callers only. For other callers they do not exist (left out of the list, a 404
by id), and an edit piece stored in a memory that also holds unlearned knowledge shows
``memory_id: null`` (see ``service.policy``).
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Response
from starlette.concurrency import run_in_threadpool

from memory_store.errors import NotFound
from memory_store.ids import is_memory_id, is_piece_id
from memory_store.types import PieceKind
from service.api.deps import AdminAuth, ApiAuth, EngineDep, IsAdmin, JobsDep
from service.errors import invalid, not_found
from service.policy import hidden_memories
from service.schemas import JobAccepted, PieceList, PieceOut

router = APIRouter(prefix="/v1/knowledge", tags=["knowledge"])


def checked_piece_id(piece_id: str) -> str:
    """``piece_id`` if it has the form of a piece id; a 404 otherwise."""
    if not is_piece_id(piece_id):
        raise not_found(f"no piece {piece_id[:64]!r} (piece ids look like pc_<digits>)")
    return piece_id


@router.get("", dependencies=[ApiAuth])
async def list_pieces(
    engine: EngineDep,
    admin: IsAdmin,
    kind: Literal["edit", "unlearn"] | None = None,
    memory_id: str | None = None,
) -> PieceList:
    """Stored pieces (optionally of one ``kind`` or one memory)."""
    if memory_id is not None and not is_memory_id(memory_id):
        raise invalid("memory_id", "not a memory id (mem_<digits>)")

    def run() -> PieceList:
        version = engine.version
        stored = engine.pieces()
        hidden = set() if admin else hidden_memories(stored)
        pieces = [
            PieceOut.of(p, admin=admin, memory_shown=p.memory_id not in hidden) for p in stored
            if (admin or p.kind != PieceKind.UNLEARN)
            and (kind is None or str(p.kind) == kind)
            and (memory_id is None or (p.memory_id == memory_id and memory_id not in hidden))
        ]
        return PieceList(codebook_version=version, pieces=pieces)

    return await run_in_threadpool(run)


@router.get("/{piece_id}", dependencies=[ApiAuth])
async def get_piece(piece_id: str, engine: EngineDep, admin: IsAdmin) -> PieceOut:
    """One stored piece (an unlearn piece for admin callers only: a 404 for others)."""
    piece_id = checked_piece_id(piece_id)

    def run() -> PieceOut:
        piece = engine.piece(piece_id)
        if admin:
            return PieceOut.of(piece, admin=True)
        if piece.kind == PieceKind.UNLEARN:  # the engine's own answer for an unknown id
            raise NotFound(f"no knowledge piece {piece_id!r}", field="piece_id")
        shown = piece.memory_id not in hidden_memories(engine.pieces())
        return PieceOut.of(piece, memory_shown=shown)

    return await run_in_threadpool(run)


@router.delete("/{piece_id}", status_code=202, dependencies=[AdminAuth])
async def delete_piece(
    piece_id: str, engine: EngineDep, jobs: JobsDep, response: Response
) -> JobAccepted:
    """Revert one edit or unlearn piece: a job retrains its memory without it."""
    piece = await run_in_threadpool(engine.piece, checked_piece_id(piece_id))  # 404 if unknown
    job = await run_in_threadpool(jobs.submit, "delete_piece", {"piece_id": piece.id})
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return JobAccepted(id=job.id, status="queued")
