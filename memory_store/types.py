"""Plain data types shared by the engine, the service and the command line."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal


class PieceKind(StrEnum):
    EDIT = "edit"
    UNLEARN = "unlearn"


MemoryKind = Literal["edit", "unlearn", "mixed"]

# stage name, step, total steps
ProgressCallback = Callable[[str, int, int], None]
# returns True when the caller wants the running update to stop before it publishes
CancelCheck = Callable[[], bool]
# given the result of a change about to be published: SQL statements (and parameters) on the
# caller's own tables, committed in the same transaction as the new version
PublishRecord = Callable[["UpdateResult"], Sequence[tuple[str, Sequence[object]]]]


@dataclass(frozen=True)
class PieceSpec:
    """A requested knowledge piece: teach (edit) or remove (unlearn) ``target`` after ``prompt``."""

    kind: PieceKind
    prompt: str
    target: str
    paraphrases: tuple[str, ...] = ()
    # whose fact this is ("Danielle Darrieux"): other relations of the subject become the
    # gate's hard negatives; None guesses a capitalised name in the prompt
    subject: str | None = None


@dataclass(frozen=True)
class RetainSpec:
    """A prompt whose behaviour must not change (used for the retention loss and the gate)."""

    prompt: str
    target: str = ""


@dataclass(frozen=True)
class Piece:
    """A stored knowledge piece."""

    id: str
    kind: PieceKind
    prompt: str
    target: str
    paraphrases: tuple[str, ...]
    memory_id: str
    created_at: float
    added_in_version: int


@dataclass(frozen=True)
class ConflictDecision:
    """How a cluster holding both edit and unlearn pieces was handled."""

    score: float  # fraction of sampled gradient pairs with cosine <= 0
    tau: float
    decision: Literal["split", "mgda"]
    samples: int  # gradient pairs scored
    mean_cosine: float
    # joint steps the scored adapter copy took first (0: a fresh adapter, where B = 0 and the
    # A-gradients vanish; decisions stored before the warm-up existed read back as 0)
    warmup_steps: int = 0
    cosines: tuple[float, ...] = ()  # of each scored pair, rounded; empty in older decisions

    def __post_init__(self) -> None:
        object.__setattr__(self, "cosines", tuple(float(c) for c in self.cosines))


@dataclass(frozen=True)
class MemoryInfo:
    """A memory of the codebook: one LoRA adapter and the pieces it holds."""

    id: str
    kind: MemoryKind
    content_hash: str
    piece_ids: tuple[str, ...]
    conflict: ConflictDecision | None
    # similarity of its pieces' keys to the memory key: {"min", "mean", "max"}
    key_stats: dict[str, float]
    bucket: int | None
    created_at: float
    added_in_version: int
    train_loss: float | None = None


@dataclass(frozen=True)
class VersionInfo:
    version: int
    created_at: float
    reason: str
    n_memories: int
    n_pieces: int


@dataclass(frozen=True)
class UpdateOptions:
    """Per-update overrides of the trainer (None keeps the configured default)."""

    unlearn_loss: Literal["npo", "ga", "idk"] | None = None
    steps: int | None = None
    learning_rate: float | None = None
    seed: int | None = None
    max_steps: int | None = None
    # fail the update (``NotReached``, nothing published) when any piece is not reached
    require_reached: bool = False
    # other relations of each piece's subject as retained prompts and gate negatives
    hard_negatives: bool = True


@dataclass(frozen=True)
class PieceCheck:
    """Whether a piece took, by greedy generation on its memory right after training: an edit
    when every prompt (the prompt and each paraphrase) starts with its target, an unlearning
    request when no output holds its answer."""

    piece_id: str
    kind: PieceKind
    reached: bool
    # prompt -> reached, for the prompt and each paraphrase
    prompts: dict[str, bool]
    reason: str = ""
    steps: int = 0


@dataclass(frozen=True)
class UpdateResult:
    codebook_version: int
    memories_created: tuple[str, ...]
    memories_updated: tuple[str, ...]
    memories_removed: tuple[str, ...]
    pieces_added: tuple[str, ...]
    pieces_removed: tuple[str, ...]
    decisions: dict[str, ConflictDecision] = field(default_factory=dict)
    duration_s: float = 0.0
    # one per piece trained by this update (new pieces and those of retrained memories)
    checks: tuple[PieceCheck, ...] = ()
    # wall seconds per stage: keys, conflict, train (prepare/steps/check/verify), gate, publish
    stage_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def pieces_failed(self) -> tuple[PieceCheck, ...]:
        return tuple(c for c in self.checks if not c.reached)


@dataclass(frozen=True)
class Route:
    """Where a prompt goes: ``memory_id`` None means the frozen base model."""

    memory_id: str | None
    gate: float
    similarity: float | None


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    max_new_tokens: int = 32
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    memory: str = "auto"  # "auto" (routed), "none" (base model) or a memory id
    seed: int | None = None
    ignore_eos: bool = False  # as vLLM's: generate until max_new_tokens (or a stop string)
    min_tokens: int = 0  # as vLLM's: no EOS and no stop string before this many new tokens


@dataclass(frozen=True)
class GenerationResult:
    text: str
    memory_id: str | None
    gate: float
    similarity: float | None
    codebook_version: int
    prompt_tokens: int
    completion_tokens: int
    finish_reason: Literal["stop", "length"]
