"""Request and response models of the native API (``/v1/generate``, updates, jobs, memories...).

Requests forbid unknown fields and take numbers and booleans strictly (``true`` is not 1,
``"yes"`` is not a boolean, ``2.0`` is not an integer). Static checks (types, ranges, non-blank
text) live here; the limits that come from the settings and the model (lengths, counts, the
context length) are checked in ``service.limits``.
Timestamps are ISO 8601 strings in UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
)

from memory_store.ids import is_memory_id
from memory_store.types import (
    ConflictDecision,
    GenerationResult,
    MemoryInfo,
    Piece,
    UpdateResult,
    VersionInfo,
)
from service.jobs import Job, piece_check_dict

# pattern of job ids (assigned by the service): "job_" + 32 hex digits
JOB_ID_PATTERN = r"^job_[0-9a-f]{32}$"


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty or blank")
    return value


def _memory_selector(value: str) -> str:
    if value in ("auto", "none") or is_memory_id(value):
        return value
    raise ValueError('must be "auto", "none" or a memory id (mem_<digits>)')


NonBlank = Annotated[str, AfterValidator(_not_blank)]
# a 64-bit seed (what torch's generators take)
Seed = Annotated[StrictInt, Field(ge=-(2**63), le=2**64 - 1)]
MemorySelector = Annotated[str, AfterValidator(_memory_selector)]


def timestamp(t: float | None) -> datetime | None:
    """Epoch seconds -> an aware UTC datetime (None stays None)."""
    return None if t is None else datetime.fromtimestamp(t, tz=UTC)


class Request(BaseModel):
    """Base of request bodies: unknown fields are an error."""

    model_config = ConfigDict(extra="forbid")


# -- generation ---------------------------------------------------------------------------


class GenerateRequest(Request):
    prompt: NonBlank
    max_new_tokens: StrictInt = Field(32, ge=1)
    temperature: StrictFloat = Field(0.0, ge=0.0, le=2.0)
    top_p: StrictFloat = Field(1.0, gt=0.0, le=1.0)
    stop: list[Annotated[str, Field(min_length=1)]] = []
    memory: MemorySelector = "auto"
    seed: Seed | None = None
    # vLLM's sampling parameters: EOS does not end the completion (max_new_tokens or a stop
    # string does); no EOS and no stop string before min_tokens new tokens (<= max_new_tokens)
    ignore_eos: StrictBool = False
    min_tokens: StrictInt = Field(0, ge=0)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int


class GenerateResponse(BaseModel):
    text: str
    # where the answer was routed; all three null when withheld (see ``service.policy``)
    memory_id: str | None
    gate: float | None
    similarity: float | None
    codebook_version: int
    finish_reason: Literal["stop", "length"]
    usage: Usage

    @classmethod
    def of(cls, r: GenerationResult) -> GenerateResponse:
        """The response for one engine result."""
        return cls(
            text=r.text,
            memory_id=r.memory_id,
            gate=r.gate,
            similarity=r.similarity,
            codebook_version=r.codebook_version,
            finish_reason=r.finish_reason,
            usage=Usage(prompt_tokens=r.prompt_tokens, completion_tokens=r.completion_tokens),
        )


class RouteRequest(Request):
    prompt: NonBlank


class RouteResponse(BaseModel):
    # all three null when withheld from a non-admin caller (see ``service.policy``)
    memory_id: str | None
    gate: float | None
    similarity: float | None
    codebook_version: int


# -- updates and jobs ---------------------------------------------------------------------


class EditIn(Request):
    prompt: NonBlank
    target: NonBlank
    paraphrases: list[NonBlank] = []
    # whose fact it is (as in EasyEdit/ROME requests); None: guessed from the prompt
    subject: NonBlank | None = None


class UnlearnIn(Request):
    prompt: NonBlank
    target: NonBlank
    paraphrases: list[NonBlank] = []
    # whose fact it is (as in EasyEdit/ROME requests); None: guessed from the prompt
    subject: NonBlank | None = None


class RetainIn(Request):
    prompt: NonBlank
    target: str = ""


class UpdateOptionsIn(Request):
    unlearn_loss: Literal["npo", "ga", "idk"] | None = None
    steps: StrictInt | None = Field(None, ge=1)
    learning_rate: StrictFloat | None = Field(None, gt=0.0, le=1.0)
    seed: Seed | None = None
    # training continues past ``steps`` until every piece takes, up to this many steps
    max_steps: StrictInt | None = Field(None, ge=1)
    # fail the job (nothing published) when a piece does not take
    require_reached: StrictBool = False
    # other relations of each piece's subject become retained prompts and gate negatives
    hard_negatives: StrictBool = True


class UpdateRequest(Request):
    edits: list[EditIn] = []
    unlearn: list[UnlearnIn] = []
    retain: list[RetainIn] = []
    options: UpdateOptionsIn = UpdateOptionsIn()


class RollbackRequest(Request):
    version: StrictInt = Field(ge=0)


class JobAccepted(BaseModel):
    id: str
    status: Literal["queued"]


class JobProgress(BaseModel):
    stage: str
    step: int
    total: int


class PieceCheckOut(BaseModel):
    """Whether a piece took: greedy generation gives an edit's target on its prompt and on
    each paraphrase (``prompts_reached``, in that order), or no longer an unlearned answer."""

    piece_id: str
    kind: Literal["edit", "unlearn"]
    reached: bool
    prompts_reached: list[bool]
    reason: str = ""
    steps: int = 0


class ChangeResult(BaseModel):
    """What a knowledge change did (the result of a job, a rollback or a memory deletion)."""

    codebook_version: int
    memories_created: list[str]
    memories_updated: list[str]
    memories_removed: list[str] = []
    pieces_added: list[str] = []
    pieces_removed: list[str] = []
    # one per piece trained by the change; the failed ones again in ``pieces_failed``
    pieces: list[PieceCheckOut] = []
    pieces_failed: list[PieceCheckOut] = []

    @classmethod
    def of(cls, r: UpdateResult) -> ChangeResult:
        """The model of an engine ``UpdateResult``."""
        return cls(
            codebook_version=r.codebook_version,
            memories_created=list(r.memories_created),
            memories_updated=list(r.memories_updated),
            memories_removed=list(r.memories_removed),
            pieces_added=list(r.pieces_added),
            pieces_removed=list(r.pieces_removed),
            pieces=[PieceCheckOut(**piece_check_dict(c)) for c in r.checks],
            pieces_failed=[PieceCheckOut(**piece_check_dict(c)) for c in r.pieces_failed],
        )



JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class JobOut(BaseModel):
    id: str
    kind: Literal["update", "delete_piece", "delete_memory", "rollback"]
    status: JobStatus
    progress: JobProgress
    result: ChangeResult | None
    error: str | None
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, job: Job) -> JobOut:
        """The model of a job snapshot."""
        return cls(
            id=job.id,
            kind=job.kind,
            status=job.status,  # type: ignore[arg-type]
            progress=JobProgress(stage=job.stage, step=job.step, total=job.total),
            result=ChangeResult(**job.result) if job.result is not None else None,
            error=job.error,
            cancel_requested=job.cancel_requested,
            created_at=timestamp(job.created_at),  # type: ignore[arg-type]
            started_at=timestamp(job.started_at),
            finished_at=timestamp(job.finished_at),
        )


class JobList(BaseModel):
    jobs: list[JobOut]


# -- memories, knowledge, codebook --------------------------------------------------------


class ConflictOut(BaseModel):
    score: float
    tau: float
    decision: Literal["split", "mgda"]
    samples: int
    mean_cosine: float
    warmup_steps: int = 0
    cosines: list[float] = []

    @classmethod
    def of(cls, c: ConflictDecision | None) -> ConflictOut | None:
        """The model of a conflict decision (None stays None)."""
        if c is None:
            return None
        return cls(
            score=c.score,
            tau=c.tau,
            decision=c.decision,
            samples=c.samples,
            mean_cosine=c.mean_cosine,
            warmup_steps=c.warmup_steps,
            cosines=list(c.cosines),
        )


class PieceOut(BaseModel):
    id: str
    kind: Literal["edit", "unlearn"]
    prompt: str
    # the target of an unlearn piece (the answer to forget) is shown to admin callers only
    target: str | None
    target_redacted: bool = False
    paraphrases: list[str]
    # null for a non-admin caller when the memory holds unlearned knowledge
    memory_id: str | None
    created_at: datetime
    added_in_version: int

    @classmethod
    def of(cls, p: Piece, *, admin: bool = False, memory_shown: bool = True) -> PieceOut:
        """The model of a stored piece; an unlearn target is redacted unless ``admin`` (non-admin
        callers are not shown unlearn pieces at all: see ``service.policy``)."""
        redact = p.kind == "unlearn" and not admin
        return cls(
            id=p.id,
            kind=str(p.kind),  # type: ignore[arg-type]
            prompt=p.prompt,
            target=None if redact else p.target,
            target_redacted=redact,
            paraphrases=list(p.paraphrases),
            memory_id=p.memory_id if memory_shown else None,
            created_at=timestamp(p.created_at),  # type: ignore[arg-type]
            added_in_version=p.added_in_version,
        )


class MemoryOut(BaseModel):
    id: str
    kind: Literal["edit", "unlearn", "mixed"]
    content_hash: str
    piece_ids: list[str]
    n_pieces: int
    conflict: ConflictOut | None
    key_stats: dict[str, float]
    bucket: int | None
    created_at: datetime
    added_in_version: int
    train_loss: float | None

    @classmethod
    def of(cls, m: MemoryInfo) -> MemoryOut:
        """The model of a memory."""
        return cls(
            id=m.id,
            kind=m.kind,
            content_hash=m.content_hash,
            piece_ids=list(m.piece_ids),
            n_pieces=len(m.piece_ids),
            conflict=ConflictOut.of(m.conflict),
            key_stats=dict(m.key_stats),
            bucket=m.bucket,
            created_at=timestamp(m.created_at),  # type: ignore[arg-type]
            added_in_version=m.added_in_version,
            train_loss=m.train_loss,
        )


class MemoryDetail(MemoryOut):
    pieces: list[PieceOut]


class MemoryList(BaseModel):
    codebook_version: int
    memories: list[MemoryOut]


class PieceList(BaseModel):
    codebook_version: int
    pieces: list[PieceOut]


class VersionOut(BaseModel):
    version: int
    created_at: datetime
    reason: str
    n_memories: int
    n_pieces: int

    @classmethod
    def of(cls, v: VersionInfo) -> VersionOut:
        """The model of a codebook version."""
        return cls(
            version=v.version,
            created_at=timestamp(v.created_at),  # type: ignore[arg-type]
            reason=v.reason,
            n_memories=v.n_memories,
            n_pieces=v.n_pieces,
        )


class CodebookOut(BaseModel):
    version: int
    n_memories: int
    n_pieces: int
    n_versions: int
    index: str
    model: str


class VersionList(BaseModel):
    current: int
    versions: list[VersionOut]
