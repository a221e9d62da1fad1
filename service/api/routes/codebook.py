"""The codebook: current version and counts, its versions, rollback (a job)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from starlette.concurrency import run_in_threadpool

from memory_store.errors import ConflictError, NotFound
from service.api.deps import AdminAuth, ApiAuth, EngineDep, JobsDep
from service.schemas import CodebookOut, JobAccepted, RollbackRequest, VersionList, VersionOut

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


@router.post("/rollback", status_code=202, dependencies=[AdminAuth])
async def rollback(body: RollbackRequest, engine: EngineDep, jobs: JobsDep,
                   response: Response) -> JobAccepted:
    """Publish a new version whose content equals ``version``: a job, like an update (its
    result names the new version)."""

    def check() -> None:
        known = {v.version for v in engine.versions()}
        if body.version != 0 and body.version not in known:
            raise NotFound(f"no codebook version {body.version}", field="version")
        if body.version == engine.store.head():
            raise ConflictError(f"version {body.version} is already current", field="version")

    await run_in_threadpool(check)
    job = await run_in_threadpool(jobs.submit, "rollback", {"version": body.version})
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return JobAccepted(id=job.id, status="queued")
