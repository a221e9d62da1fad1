"""Typed request and response models of the LOKA Serve HTTP API.

Response models ignore fields they do not know, so a newer server keeps working with an older
client. Request models forbid unknown fields, so a typo fails here rather than on the server.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
TERMINAL_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})


class _Response(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---- requests -------------------------------------------------------------------------------


class Edit(_Request):
    """Teach the model to continue ``prompt`` with ``target``."""

    prompt: str
    target: str
    paraphrases: list[str] = Field(default_factory=list)


class Unlearn(_Request):
    """Make the model stop continuing ``prompt`` with ``target``."""

    prompt: str
    target: str
    # Optional: only sent when given, the API's unlearn items need only prompt and target.
    paraphrases: list[str] | None = None


class Retain(_Request):
    """A prompt whose behaviour must not change."""

    prompt: str
    target: str = ""


class UpdateOptions(BaseModel):
    """Per-update trainer overrides; ``None`` keeps the server's default.

    Unknown keys are passed through so options added to the server can be used before the
    client learns about them.
    """

    model_config = ConfigDict(extra="allow")

    unlearn_loss: Literal["npo", "ga", "idk"] | None = None
    steps: int | None = None
    learning_rate: float | None = None
    seed: int | None = None


# ---- responses ------------------------------------------------------------------------------


class Health(_Response):
    """Answer of ``/health`` and ``/ready``."""

    status: str


class Usage(_Response):
    prompt_tokens: int
    completion_tokens: int


class GenerateResponse(_Response):
    """A completion and where it was routed (``memory_id`` None: the base model; ``memory_id``,
    ``gate`` and ``similarity`` all None: withheld from a non-admin caller)."""

    text: str
    memory_id: str | None = None
    gate: float | None = 0.0
    similarity: float | None = None
    codebook_version: int = 0
    finish_reason: str | None = None  # "stop" or "length"
    usage: Usage | None = None


class RouteResponse(_Response):
    """Where a prompt would be routed (``memory_id`` None: the base model; ``memory_id``,
    ``gate`` and ``similarity`` all None: withheld from a non-admin caller)."""

    memory_id: str | None = None
    gate: float | None = 0.0
    similarity: float | None = None
    codebook_version: int | None = None


class JobProgress(_Response):
    stage: str = ""
    step: int = 0
    total: int = 0


class JobResult(_Response):
    """What a finished knowledge change published."""

    codebook_version: int
    memories_created: list[str] = Field(default_factory=list)
    memories_updated: list[str] = Field(default_factory=list)
    memories_removed: list[str] = Field(default_factory=list)
    pieces_added: list[str] = Field(default_factory=list)
    pieces_removed: list[str] = Field(default_factory=list)


class Job(_Response):
    """A background knowledge change (update, knowledge deletion)."""

    id: str
    status: JobStatus
    kind: str | None = None
    progress: JobProgress | None = None
    result: JobResult | None = None
    error: str | None = None
    cancel_requested: bool = False
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def done(self) -> bool:
        """True once the job can no longer change (succeeded, failed or cancelled)."""
        return self.status in TERMINAL_STATUSES


class ConflictDecision(_Response):
    """How a memory holding both edits and unlearns was handled."""

    score: float
    tau: float
    decision: str
    samples: int | None = None
    mean_cosine: float | None = None
    # warm-up steps before the gradients were taken; the cosine of each scored pair
    warmup_steps: int | None = None
    cosines: list[float] = Field(default_factory=list)


class Piece(_Response):
    """A stored knowledge piece (one edit or unlearn)."""

    id: str
    kind: str
    prompt: str
    # None for an unlearn piece read without the admin token (``target_redacted``)
    target: str | None = None
    target_redacted: bool = False
    paraphrases: list[str] = Field(default_factory=list)
    memory_id: str | None = None
    created_at: datetime | None = None
    added_in_version: int | None = None


class Memory(_Response):
    """A memory of the codebook: one LoRA adapter and the pieces it holds."""

    id: str
    kind: str
    content_hash: str | None = None
    piece_ids: list[str] = Field(default_factory=list)
    n_pieces: int | None = None
    conflict: ConflictDecision | None = None
    key_stats: dict[str, float] = Field(default_factory=dict)
    bucket: int | None = None
    created_at: datetime | None = None
    added_in_version: int | None = None
    train_loss: float | None = None


class MemoryDetail(Memory):
    """A memory with its pieces spelled out."""

    pieces: list[Piece] = Field(default_factory=list)


class Version(_Response):
    """One published codebook version."""

    version: int
    created_at: datetime | None = None
    reason: str | None = None
    n_memories: int | None = None
    n_pieces: int | None = None


class VersionList(_Response):
    """Every published codebook version (the rollback targets), oldest first."""

    current: int
    versions: list[Version] = Field(default_factory=list)


class CodebookInfo(_Response):
    """The current codebook version and its size."""

    version: int
    n_memories: int = 0
    n_pieces: int = 0
    n_versions: int | None = None
    index: str | None = None
    model: str | None = None  # path or hub id of the base model


class ChangeResult(JobResult):
    """The result of a synchronous knowledge change (memory deletion, rollback)."""


class ModelCard(_Response):
    """An OpenAI-style model entry: ``loka`` (routed), ``base``, or a memory id."""

    id: str
    object: str = "model"
    created: int | None = None
    owned_by: str | None = None
    root: str | None = None
    parent: str | None = None


class ModelList(_Response):
    object: str = "list"
    data: list[ModelCard] = Field(default_factory=list)


# Anything a caller may pass where a request model is expected.
EditLike = Edit | dict[str, Any]
UnlearnLike = Unlearn | dict[str, Any]
RetainLike = Retain | dict[str, Any]
OptionsLike = UpdateOptions | dict[str, Any]
