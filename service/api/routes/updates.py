"""``POST /v1/updates``: queue a knowledge update (edits, unlearn pieces, retain prompts)."""

from __future__ import annotations

import re

from fastapi import APIRouter, Response
from starlette.concurrency import run_in_threadpool

from memory_store.errors import InvalidInput
from memory_store.types import PieceKind, PieceSpec, RetainSpec, UpdateOptions
from service.api.deps import AdminAuth, EngineDep, JobsDep, SettingsDep
from service.jobs import update_payload
from service.limits import check_update
from service.schemas import JobAccepted, UpdateRequest

router = APIRouter(prefix="/v1", tags=["updates"])

_PIECE_FIELD = re.compile(r"^pieces\.(\d+)(.*)$")
_INDEX = re.compile(r"\[(\d+)\]")
# an engine field name inside a message ("pieces[3].paraphrases[0]", "retain[1].prompt")
_ENGINE_FIELD = re.compile(r"\b(?:pieces|retain)(?:\[\d+\]|\.[a-z_]+)+")


def _body_field(field: str | None, n_edits: int) -> str | None:
    """The engine names pieces by their index in edits + unlearn; name them as the body does.

    ``"pieces[3].paraphrases[0]"`` with 2 edits -> ``"unlearn.1.paraphrases.0"``.
    """
    if field is None:
        return None
    field = _INDEX.sub(r".\1", field)  # "pieces[3].prompt" -> "pieces.3.prompt"
    m = _PIECE_FIELD.match(field)
    if m is None:
        return field
    i = int(m.group(1))
    name, j = ("edits", i) if i < n_edits else ("unlearn", i - n_edits)
    return f"{name}.{j}{m.group(2)}"


@router.post("/updates", status_code=202, dependencies=[AdminAuth])
async def submit_update(
    body: UpdateRequest, response: Response, settings: SettingsDep, engine: EngineDep,
    jobs: JobsDep,
) -> JobAccepted:
    """Validate the update and queue it as a job; poll ``GET /v1/jobs/{id}`` for its progress."""
    check_update(settings, body)
    pieces = [
        PieceSpec(PieceKind.EDIT, e.prompt, e.target, tuple(e.paraphrases), e.subject)
        for e in body.edits
    ] + [
        PieceSpec(PieceKind.UNLEARN, u.prompt, u.target, tuple(u.paraphrases), u.subject)
        for u in body.unlearn
    ]
    retain = [RetainSpec(r.prompt, r.target) for r in body.retain]
    options = UpdateOptions(**body.options.model_dump())
    try:  # texts, and every training sequence against the model's context length
        await run_in_threadpool(engine.validate_pieces, pieces, retain)
    except InvalidInput as exc:
        n = len(body.edits)
        message = _ENGINE_FIELD.sub(lambda m: _body_field(m.group(0), n) or "", exc.message)
        raise InvalidInput(message, field=_body_field(exc.field, n)) from exc
    job = await run_in_threadpool(jobs.submit, "update", update_payload(pieces, retain, options))
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return JobAccepted(id=job.id, status="queued")
