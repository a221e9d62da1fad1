"""Knowledge pieces: list, inspect, and revert one (``DELETE`` runs as a job).

The target of an unlearn piece (the answer the model must forget) is itself sensitive: it is
returned only to callers with the admin token (``target: null, target_redacted: true`` for
others).
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Response
from starlette.concurrency import run_in_threadpool

from memory_store.ids import is_memory_id, is_piece_id
from service.api.deps import AdminAuth, ApiAuth, EngineDep, IsAdmin, JobsDep
from service.errors import invalid, not_found
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
        pieces = [
            PieceOut.of(p, admin=admin) for p in engine.pieces()
            if (kind is None or str(p.kind) == kind)
            and (memory_id is None or p.memory_id == memory_id)
        ]
        return PieceList(codebook_version=version, pieces=pieces)

    return await run_in_threadpool(run)


@router.get("/{piece_id}", dependencies=[ApiAuth])
async def get_piece(piece_id: str, engine: EngineDep, admin: IsAdmin) -> PieceOut:
    """One stored piece."""
    piece = await run_in_threadpool(engine.piece, checked_piece_id(piece_id))
    return PieceOut.of(piece, admin=admin)


@router.delete("/{piece_id}", status_code=202, dependencies=[AdminAuth])
async def delete_piece(
    piece_id: str, engine: EngineDep, jobs: JobsDep, response: Response
) -> JobAccepted:
    """Revert one edit or unlearn piece: a job retrains its memory without it."""
    piece = await run_in_threadpool(engine.piece, checked_piece_id(piece_id))  # 404 if unknown
    job = await run_in_threadpool(jobs.submit, "delete_piece", {"piece_id": piece.id})
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return JobAccepted(id=job.id, status="queued")
