"""Memories of the codebook: list, inspect (pieces, kind, conflict decision, key stats), delete.

A memory holding unlearned knowledge (kind ``unlearn`` or ``mixed``) is shown to admin callers
only: for others it is left out of the list and a 404 by id (see ``service.policy``).
"""

from __future__ import annotations

from fastapi import APIRouter, Response
from starlette.concurrency import run_in_threadpool

from memory_store.errors import NotFound
from memory_store.ids import is_memory_id
from service.api.deps import AdminAuth, ApiAuth, EngineDep, IsAdmin, JobsDep
from service.errors import not_found
from service.policy import HIDDEN_KINDS
from service.schemas import JobAccepted, MemoryDetail, MemoryList, MemoryOut, PieceOut

router = APIRouter(prefix="/v1/memories", tags=["memories"])


def checked_memory_id(memory_id: str) -> str:
    """``memory_id`` if it has the form of a memory id; a 404 otherwise."""
    if not is_memory_id(memory_id):
        raise not_found(f"no memory {memory_id[:64]!r} (memory ids look like mem_<digits>)")
    return memory_id


@router.get("", dependencies=[ApiAuth])
async def list_memories(engine: EngineDep, admin: IsAdmin) -> MemoryList:
    """Every memory of the current codebook version (that the caller may see)."""

    def run() -> MemoryList:
        version = engine.version
        return MemoryList(
            codebook_version=version,
            memories=[MemoryOut.of(m) for m in engine.memories()
                      if admin or m.kind not in HIDDEN_KINDS],
        )

    return await run_in_threadpool(run)


@router.get("/{memory_id}", dependencies=[ApiAuth])
async def get_memory(memory_id: str, engine: EngineDep, admin: IsAdmin) -> MemoryDetail:
    """One memory with its pieces (unlearn targets for admin callers only), kind, conflict
    decision and key similarity stats."""
    memory_id = checked_memory_id(memory_id)

    def run() -> MemoryDetail:
        memory = engine.memory(memory_id)
        if not admin and memory.kind in HIDDEN_KINDS:  # the engine's answer for an unknown id
            raise NotFound(f"no memory {memory_id!r}", field="memory_id")
        pieces = [PieceOut.of(engine.piece(p), admin=admin) for p in memory.piece_ids]
        return MemoryDetail(**MemoryOut.of(memory).model_dump(), pieces=pieces)

    return await run_in_threadpool(run)


@router.delete("/{memory_id}", status_code=202, dependencies=[AdminAuth])
async def delete_memory(memory_id: str, engine: EngineDep, jobs: JobsDep,
                        response: Response) -> JobAccepted:
    """Drop a memory and its pieces: a job that publishes a new codebook version."""
    memory = await run_in_threadpool(engine.memory, checked_memory_id(memory_id))  # 404
    job = await run_in_threadpool(jobs.submit, "delete_memory", {"memory_id": memory.id})
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return JobAccepted(id=job.id, status="queued")
