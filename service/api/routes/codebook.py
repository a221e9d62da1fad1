"""The codebook: current version and counts, its versions, rollback."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from service.api.deps import AdminAuth, ApiAuth, EngineDep
from service.schemas import ChangeResult, CodebookOut, RollbackRequest, VersionList, VersionOut

router = APIRouter(prefix="/v1/codebook", tags=["codebook"])


@router.get("", dependencies=[ApiAuth])
async def codebook(engine: EngineDep) -> CodebookOut:
    """Current version, number of memories, pieces and versions, index kind, base model."""
    info = await run_in_threadpool(engine.codebook_info)
    return CodebookOut(
        version=info["version"],
        n_memories=info["n_memories"],
        n_pieces=info["n_pieces"],
        n_versions=info["n_versions"],
        index=str(info.get("index", "")),
        model=engine.model_name,
    )


@router.get("/versions", dependencies=[ApiAuth])
async def versions(engine: EngineDep) -> VersionList:
    """Every published version (a rollback target), oldest first."""

    def run() -> VersionList:
        current = engine.version
        return VersionList(current=current, versions=[VersionOut.of(v) for v in engine.versions()])

    return await run_in_threadpool(run)


@router.post("/rollback", dependencies=[AdminAuth])
async def rollback(body: RollbackRequest, engine: EngineDep) -> ChangeResult:
    """Publish a new version whose content equals ``version``."""
    return ChangeResult.of(await run_in_threadpool(engine.rollback, body.version))
