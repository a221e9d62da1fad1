"""The conflict score of LOKA: do a mixed memory's edits and unlearning requests pull its
adapter in opposite directions? Decides between splitting the memory and multi-task (MGDA)
training of one.

The gradients are not taken on the freshly initialised adapter: there B = 0, so every gradient
with respect to A is exactly zero and the cosine only sees the B half. A throwaway copy of the
memory's adapter first takes ``warmup_steps`` joint steps (edit NLL + NPO unlearning, Adam at the
trainer's learning rate); the gradients of half-size mini-batches are taken at those weights.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence

import torch

from memory_store.config import ConflictSettings, LoraSettings, TrainerSettings
from memory_store.lora.layer import TrainState, use_state
from memory_store.lora.weights import AdapterWeights, init_adapter
from memory_store.models.access import ModelLayout
from memory_store.types import ConflictDecision
from memory_store.update.trainer import (
    MemoryTask,
    Objective,
    autocast_for,
    grad_of,
    make_objective,
)

logger = logging.getLogger(__name__)

# at most this many (edit subset, unlearn subset) combinations are enumerated (and sampled
# without replacement); beyond it, mini-batches are drawn at random
ENUMERATE_MAX = 4096
# decimals of the cosines recorded in a ConflictDecision
COSINE_DECIMALS = 4

RowPair = tuple[torch.Tensor, torch.Tensor]


def npo_settings(trainer: TrainerSettings) -> TrainerSettings:
    """The trainer settings of the conflict gradients: unlearning always by NPO."""
    return trainer.model_copy(update={"unlearn_loss": "npo"})


def warm_up(objective: Objective, state: TrainState, trainer: TrainerSettings, steps: int,
            optimizer: torch.optim.Optimizer | None = None) -> torch.optim.Optimizer:
    """``steps`` joint steps (edit NLL + unlearn loss, full batch) on ``state`` in place, Adam
    at ``trainer.learning_rate`` (call inside ``use_state(state)``; ``state`` should be a
    throwaway copy). Pass the returned optimizer back in to continue."""
    params = state.parameters()
    opt = optimizer or torch.optim.Adam(params, lr=trainer.learning_rate)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = torch.zeros(())
        if objective.edit is not None:
            loss = loss + objective.edit_loss()[0]
        if objective.has_unlearn_term:
            loss = loss + objective.unlearn_loss()[0]
        loss.backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    return opt


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a.dot(b) / (a.norm() * b.norm()).clamp(min=1e-12))


def half_batch(n: int, batch_size: int) -> int:
    """Mini-batch size of a side with ``n`` rows: half of them (so two draws differ), at least
    one, at most ``batch_size``."""
    return min(batch_size, max(1, n // 2))


def batch_pairs(n_e: int, n_u: int, batch_size: int, samples: int,
                gen: torch.Generator) -> list[RowPair]:
    """(edit rows, unlearn rows) mini-batch pairs. All combinations when there are at most
    ``samples``; ``samples`` distinct ones drawn from the enumeration when there are at most
    ``ENUMERATE_MAX``; else ``samples`` random draws."""
    k_e, k_u = half_batch(n_e, batch_size), half_batch(n_u, batch_size)
    total = math.comb(n_e, k_e) * math.comb(n_u, k_u)
    if total <= ENUMERATE_MAX:
        combos = list(itertools.product(itertools.combinations(range(n_e), k_e),
                                        itertools.combinations(range(n_u), k_u)))
        if total > samples:
            pick = torch.randperm(total, generator=gen)[:samples].sort().values
            combos = [combos[i] for i in pick.tolist()]
        return [(torch.tensor(e), torch.tensor(u)) for e, u in combos]
    return [(torch.randperm(n_e, generator=gen)[:k_e].sort().values,
             torch.randperm(n_u, generator=gen)[:k_u].sort().values) for _ in range(samples)]


def edit_grad(objective: Objective, state: TrainState, rows: torch.Tensor) -> torch.Tensor:
    return grad_of(objective.edit_loss(rows)[0], state.parameters())


def unlearn_grad(objective: Objective, state: TrainState, rows: torch.Tensor) -> torch.Tensor:
    return grad_of(objective.unlearn_loss(rows)[0], state.parameters())


def pair_cosines(objective: Objective, state: TrainState, pairs: Sequence[RowPair]
                 ) -> list[float]:
    """Cosine of the edit and unlearn gradients at ``state`` for each row pair (call inside
    ``use_state(state)``)."""
    return [cosine(edit_grad(objective, state, e), unlearn_grad(objective, state, u))
            for e, u in pairs]


def conflict_cosines(
    model, tokenizer, layout: ModelLayout, task: MemoryTask, trainer: TrainerSettings,
    lora: LoraSettings, conflict: ConflictSettings, seed: int,
    adapter: AdapterWeights | None = None,
) -> list[float]:
    """The cosines of the sampled (edit, unlearn) mini-batch gradient pairs after the warm-up.
    No weights are updated: neither the model's nor ``adapter``'s."""
    npo = npo_settings(trainer)
    objective = make_objective(model, tokenizer, layout, task, npo)
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    pairs = batch_pairs(len(objective.edit), len(objective.unlearn), conflict.batch_size,
                        conflict.samples, gen)
    with autocast_for(model, npo):
        state = TrainState(adapter or init_adapter(layout, lora.rank, lora.alpha, seed), device)
        with use_state(state):
            if conflict.warmup_steps > 0:
                warm_up(objective, state, npo, conflict.warmup_steps)
            return pair_cosines(objective, state, pairs)


def score_of(cosines: Sequence[float]) -> float:
    """Fraction of the pairs whose cosine is <= 0."""
    return sum(c <= 0 for c in cosines) / len(cosines)


def conflict_score(
    model, tokenizer, layout: ModelLayout, task: MemoryTask, trainer: TrainerSettings,
    lora: LoraSettings, conflict: ConflictSettings, seed: int,
) -> tuple[float, float]:
    """Fraction of sampled (edit, unlearn) mini-batch pairs whose LoRA gradients have
    cosine <= 0, and the mean cosine."""
    cos = conflict_cosines(model, tokenizer, layout, task, trainer, lora, conflict, seed)
    return score_of(cos), sum(cos) / len(cos)


def decide(model, tokenizer, layout: ModelLayout, task: MemoryTask, trainer: TrainerSettings,
           lora: LoraSettings, settings: ConflictSettings,
           adapter: AdapterWeights | None = None) -> ConflictDecision:
    """Score ``task``'s conflict and decide: "split" at or above ``tau``, else "mgda" (or the
    mode the settings force)."""
    cos = conflict_cosines(model, tokenizer, layout, task, trainer, lora, settings,
                           trainer.seed, adapter)
    score, mean_cos = score_of(cos), sum(cos) / len(cos)
    decision = settings.mode if settings.mode != "auto" else (
        "split" if score >= settings.tau else "mgda")
    logger.info("conflict score %.2f (mean cos %.3f, %d pairs, %d warm-up steps) -> %s",
                score, mean_cos, len(cos), settings.warmup_steps, decision)
    return ConflictDecision(score, settings.tau, decision, len(cos), mean_cos,
                            settings.warmup_steps,
                            tuple(round(c, COSINE_DECIMALS) for c in cos))
