"""The common interface of every update method: a budget, a served model, a factory.

Every method is fitted with the same call,
``fit(model_dir, pieces, retain, budget, seed, workdir) -> Served``, and serves through the same
operations (generate, score, predictions, update), so the benchmark treats LOKA, its ablations
and the baselines alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from memory_store.models.access import ModelLayout
from memory_store.types import PieceSpec, RetainSpec

BYTES_PER_PARAM = 4  # adapters are stored in float32


@dataclass(frozen=True)
class Budget:
    """What every method gets: the same LoRA shape, the same number of optimisation steps per
    piece, the same learning rate and retain set.

    ``steps`` is one round of optimisation steps each piece takes part in: LOKA trains each
    memory (at most ``batch_pieces`` pieces, LOKA's capacity) full-batch for ``steps`` steps;
    a single adapter runs ``steps`` epochs of mini-batches of ``batch_pieces`` pieces; GRACE
    and WISE take ``steps`` steps on their value / side memory. After each round every method
    checks greedy generation on the *training* prompts (each edit output starts with its
    target, no unlearning output contains its answer) and, while some are not reached, trains
    another round of ``steps``, up to ``max_steps = steps * (1 + verify_rounds)`` steps per
    piece in all (LOKA: the engine's ``verify_rounds`` / ``max_steps``; the others:
    :func:`benchmarks.methods.verify.train_rounds`). With ``early_stop`` a round ends once the
    teacher-forced targets are met (the engine's rule), checked every ``check_every`` steps
    (LOKA, GRACE, WISE) or epochs (single adapters)."""

    rank: int = 8
    alpha: float = 16.0
    steps: int = 60
    batch_pieces: int = 8
    learning_rate: float = 5e-3
    max_retain: int = 16
    early_stop: bool = True
    check_every: int = 10
    verify_rounds: int = 2
    device: str = "cpu"

    def __post_init__(self) -> None:
        for name in ("rank", "steps", "batch_pieces", "check_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"budget.{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("max_retain", "verify_rounds"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"budget.{name} must be >= 0, got {getattr(self, name)!r}")
        if not (self.learning_rate > 0 and self.alpha > 0):
            raise ValueError("budget.learning_rate and budget.alpha must be > 0")

    @property
    def max_steps(self) -> int:
        """The most optimisation steps (single adapters: epochs) any piece takes part in."""
        return self.steps * (1 + self.verify_rounds)


@dataclass
class UpdateStats:
    """What one ``fit`` / ``update`` did. ``steps_per_piece``: the most optimisation steps
    (single adapters: epochs) any piece of this update took part in, at most
    ``Budget.max_steps``."""

    seconds: float
    optimiser_steps: int
    steps_per_piece: int = 0
    info: dict[str, Any] = field(default_factory=dict)


class Served(Protocol):
    """A base model plus what a method learned, answering queries."""

    name: str
    last_update: UpdateStats

    def generate(self, prompts: Sequence[str], max_new_tokens: int) -> list[str]:
        """Greedy continuations, one per prompt."""
        ...

    def score(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[float, float]]:
        """Teacher-forced (summed log-probability, token accuracy) of each target."""
        ...

    def predictions(self, pairs: Sequence[tuple[str, str]]) -> list[list[int]]:
        """Teacher-forced argmax token at each answer position of each (prompt, answer), each
        prompt served as ``generate`` serves it (EasyEdit's locality compares these before and
        after an update). Implement with ``benchmarks.methods.predict.teacher_forced_argmax``."""
        ...

    def update(self, pieces: Sequence[PieceSpec], retain: Sequence[RetainSpec] = ()
               ) -> UpdateStats:
        """Apply more pieces on top of what was learned (the sequential protocol)."""
        ...

    def footprint_bytes(self) -> int:
        """Bytes of everything learned (adapters, keys, gate), not counting the base model."""
        ...

    def info(self) -> dict[str, Any]:
        """Method-specific facts (memories, routing, conflict decisions), JSON-serialisable."""
        ...

    def close(self) -> None:
        ...


class FitFn(Protocol):
    def __call__(self, model_dir: Path, pieces: Sequence[PieceSpec],
                 retain: Sequence[RetainSpec], budget: Budget, seed: int,
                 workdir: Path) -> Served: ...


@dataclass(frozen=True)
class MethodFactory:
    """A registered method: its name, family and fit entry point."""

    name: str
    family: str  # "loka", "ablation", "baseline" or "reference"
    description: str
    fit: FitFn

    def __call__(self, model_dir: Path, pieces: Sequence[PieceSpec],
                 retain: Sequence[RetainSpec], budget: Budget, seed: int,
                 workdir: Path) -> Served:
        return self.fit(model_dir, pieces, retain, budget, seed, workdir)


def adapter_bytes(layout: ModelLayout, rank: int) -> int:
    """Bytes of one LoRA adapter (A and B of every target module) in float32."""
    return BYTES_PER_PARAM * rank * sum(t.in_features + t.out_features for t in layout.targets)
