"""Codebook methods served by the LOKA engine: LOKA itself, its ablations (LOKA.md section 4)
and ``lora_codebook``, a GRACE-style per-piece key-value codebook of LoRA values (the faithful
GRACE, one layer's output replaced by a value vector, is :mod:`benchmarks.methods.grace`).

Each is ``memory_store.Loka`` with a ``LokaConfig`` variant; the budget fixes the LoRA shape,
the steps, the learning rate and the capacity (= the single adapters' mini-batch size).

``lora_codebook`` (GRACE-style, Hartvigsen et al. 2023, adapted to LoRA values): one value
per piece (a rank-r LoRA trained on that piece alone, with no retain term), keyed by the piece
prompt's key; a query uses the value of its nearest key if it lies within the deferral
radius, else the base model. There is no learned gate and no sharing between pieces. The
radius is a cosine: GRACE's initial epsilon = 1.0 (Euclidean) on unit-normalised keys is
cosine >= 0.5.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks.methods.base import BYTES_PER_PARAM, Budget, UpdateStats, adapter_bytes
from benchmarks.methods.predict import teacher_forced_argmax
from memory_store.config import LokaConfig
from memory_store.engine import Loka
from memory_store.lora.layer import use_state
from memory_store.serving.lora import BatchState
from memory_store.types import GenerationRequest, PieceSpec, RetainSpec

LORA_CODEBOOK_RADIUS = 0.5
MAX_CAPACITY = 10_000  # the largest capacity LokaConfig accepts: "one dense memory"

# a variant rewrites the budget-derived config: (config) -> config
Variant = Callable[[LokaConfig], LokaConfig]


def with_fields(config: LokaConfig, **sections: dict[str, Any]) -> LokaConfig:
    """``config`` with some fields of some sections replaced."""
    update = {name: getattr(config, name).model_copy(update=fields)
              for name, fields in sections.items()}
    return config.model_copy(update=update)


VARIANTS: dict[str, Variant] = {
    "loka": lambda c: c,
    "loka_dense": lambda c: with_fields(c, mapping={"capacity": MAX_CAPACITY}),
    "loka_per_piece": lambda c: with_fields(c, mapping={"capacity": 1}),
    # no learned gate and no similarity guard: every query goes to its nearest memory
    "loka_no_router": lambda c: with_fields(c, router={"enabled": False, "min_similarity": -1.0}),
    "loka_never_split": lambda c: with_fields(c, conflict={"mode": "mgda"}),
    "loka_always_split": lambda c: with_fields(c, conflict={"mode": "split"}),
    "lora_codebook": lambda c: with_fields(c, mapping={"capacity": 1},
                             router={"enabled": False, "min_similarity": LORA_CODEBOOK_RADIUS},
                             trainer={"max_retain": 0, "retain_weight": 0.0}),
}


def budget_config(budget: Budget, seed: int) -> LokaConfig:
    """LOKA's default config with the shared budget applied: ``steps`` per round, the
    engine's verify rounds and at most ``budget.max_steps`` steps per memory."""
    c = LokaConfig()
    return with_fields(c, lora={"rank": budget.rank, "alpha": budget.alpha},
                 mapping={"capacity": budget.batch_pieces},
                 trainer={"steps": budget.steps, "learning_rate": budget.learning_rate,
                          "max_retain": budget.max_retain, "early_stop": budget.early_stop,
                          "check_every": budget.check_every, "seed": seed,
                          "verify_rounds": budget.verify_rounds,
                          "max_steps": budget.max_steps},
                 router={"seed": seed})


class LokaServed:
    """A LOKA codebook (or a variant) in its own store under ``workdir``."""

    def __init__(self, name: str, model_dir: Path, config: LokaConfig, budget: Budget,
                 workdir: Path) -> None:
        self.name = name
        self.config = config
        self.budget = budget
        self.loka = Loka.open(workdir / "store", model=model_dir, config=config,
                              device=budget.device)
        self.decisions: list[dict[str, Any]] = []
        self.last_update = UpdateStats(0.0, 0)

    def generate(self, prompts: Sequence[str], max_new_tokens: int) -> list[str]:
        if not prompts:
            return []
        results = self.loka.generate([GenerationRequest(p, max_new_tokens) for p in prompts])
        return [r.text for r in results]

    def score(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[float, float]]:
        return [(s.logprob, s.token_accuracy) for s in self.loka.score(pairs)]

    def predictions(self, pairs: Sequence[tuple[str, str]]) -> list[list[int]]:
        """Argmax predictions with each prompt's memory as generation routes it (the engine's
        ``score`` routing: the current version's router on the prompt's key)."""
        runtime, live = self.loka.serving, self.loka.live

        def routed(chunk: list[tuple[str, str]]):
            routes = runtime.route(live, [p for p, _ in chunk])
            adapters = [runtime.adapter(live, r.memory_id) for r in routes]
            return use_state(BatchState(adapters, runtime.model.dtype, runtime.model.device))
        return teacher_forced_argmax(runtime.model, runtime.tokenizer, pairs, routed)

    def routed(self, prompts: Sequence[str]) -> list[bool]:
        """Whether each prompt is served by a memory (False: the base model)."""
        return [r.memory_id is not None for r in self.loka.route(prompts)] if prompts else []

    def update(self, pieces: Sequence[PieceSpec], retain: Sequence[RetainSpec] = ()
               ) -> UpdateStats:
        started = time.perf_counter()
        result = self.loka.update(pieces, retain)
        self.decisions += [{"memory": k, **asdict(v)} for k, v in result.decisions.items()]
        touched = [*result.memories_created, *result.memories_updated]
        per_memory = [int(self.loka.memory(m).key_stats.get("steps", 0)) for m in touched]
        # a memory trains its pieces full-batch: each takes part in every step of its memory
        self.last_update = UpdateStats(time.perf_counter() - started, sum(per_memory),
                                       max(per_memory, default=0),
                                       {"memories_created": len(result.memories_created),
                                        "memories_updated": len(result.memories_updated)})
        return self.last_update

    def footprint_bytes(self) -> int:
        """Adapters + stored keys (one per prompt/paraphrase, one per memory) + the gate."""
        info = self.loka.codebook_info()
        n_keys = sum(1 + len(p.paraphrases) for p in self.loka.pieces()) + info["n_memories"]
        d = self.loka.layout.hidden_size
        gate = 0
        if self.config.router.enabled and info["n_memories"]:
            h = self.config.router.hidden
            gate = (d + 1) * h + h + h + 1
        return (info["n_memories"] * adapter_bytes(self.loka.layout, self.config.lora.rank)
                + BYTES_PER_PARAM * (n_keys * d + gate))

    def info(self) -> dict[str, Any]:
        mems = self.loka.memories()
        kinds: dict[str, int] = {}
        for m in mems:
            kinds[m.kind] = kinds.get(m.kind, 0) + 1
        return {"memories": len(mems), "pieces": len(self.loka.pieces()), "kinds": kinds,
                "decisions": self.decisions,
                "converged": sum(int(m.key_stats.get("converged", 0)) for m in mems)}

    def close(self) -> None:
        self.loka.close()


def fit_codebook(name: str):
    """The fit entry point of codebook method ``name`` (a key of :data:`VARIANTS`)."""
    variant = VARIANTS[name]

    def fit(model_dir: Path, pieces: Sequence[PieceSpec], retain: Sequence[RetainSpec],
            budget: Budget, seed: int, workdir: Path) -> LokaServed:
        served = LokaServed(name, model_dir, variant(budget_config(budget, seed)), budget,
                            workdir)
        served.update(pieces, retain)
        return served

    fit.__name__ = f"fit_{name}"
    fit.__doc__ = f"Fit the {name!r} codebook method (see module docstring)."
    return fit
