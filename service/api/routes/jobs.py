"""Jobs: ``GET /v1/jobs``, ``GET /v1/jobs/{id}``, ``DELETE /v1/jobs/{id}`` (cancel)."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Query, Response
from starlette.concurrency import run_in_threadpool

from service.api.deps import AdminAuth, ApiAuth, JobsDep, StateDep
from service.errors import not_found
from service.schemas import JOB_ID_PATTERN, JobList, JobOut, JobStatus

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

_JOB_ID = re.compile(JOB_ID_PATTERN)


def checked_job_id(job_id: str) -> str:
    """``job_id`` if it has the form of a job id; a 404 otherwise (it is never used as is)."""
    if not _JOB_ID.fullmatch(job_id):  # not match: "$" accepts a trailing newline
        raise not_found(f"no job {job_id[:64]!r} (job ids look like job_<32 hex digits>)")
    return job_id


@router.get("", dependencies=[ApiAuth])
async def list_jobs(
    jobs: JobsDep,
    status: JobStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> JobList:
    """Jobs, newest first (optionally only those of one ``status``)."""
    found = await run_in_threadpool(jobs.list_jobs, status, limit)
    return JobList(jobs=[JobOut.of(j) for j in found])


@router.get("/{job_id}", dependencies=[ApiAuth])
async def get_job(job_id: str, jobs: JobsDep, state: StateDep) -> JobOut:
    """One job: status, progress while it runs, result or error when it ends.

    Read your writes: a job is marked done in the transaction that publishes its version, and
    whichever process ran it, this server switches to that version before it answers that the
    job succeeded (the head follower would within a second anyway)."""
    job = await run_in_threadpool(jobs.get, checked_job_id(job_id))
    published = (job.result or {}).get("codebook_version")
    engine = state.engine
    if (job.status == "succeeded" and isinstance(published, int) and engine is not None
            and engine.version < published):
        await run_in_threadpool(engine.refresh)
    return JobOut.of(job)


@router.delete(
    "/{job_id}", dependencies=[AdminAuth],
    responses={202: {"description": "cancellation requested; the running job stops soon"}},
)
async def cancel_job(job_id: str, jobs: JobsDep, response: Response) -> JobOut:
    """Cancel a queued job (200, now ``cancelled``) or a running one (202, it stops soon).

    A finished job is a 409.
    """
    job = await run_in_threadpool(jobs.cancel, checked_job_id(job_id))
    if job.status == "running":
        response.status_code = 202
    return JobOut.of(job)
