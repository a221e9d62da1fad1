"""The conflict score of LOKA: do a mixed memory's edits and unlearning requests pull its
adapter in opposite directions? Decides between splitting the memory and multi-task (MGDA)
training of one."""

from __future__ import annotations

import logging

import torch

from memory_store.config import ConflictSettings, LoraSettings, TrainerSettings
from memory_store.lora.layer import TrainState, use_state
from memory_store.lora.weights import init_adapter
from memory_store.models.access import ModelLayout
from memory_store.types import ConflictDecision
from memory_store.update.trainer import MemoryTask, autocast_for, grad_of, make_objective

logger = logging.getLogger(__name__)


def conflict_score(
    model, tokenizer, layout: ModelLayout, task: MemoryTask, trainer: TrainerSettings,
    lora: LoraSettings, conflict: ConflictSettings, seed: int,
) -> tuple[float, float]:
    """Fraction of sampled (edit, unlearn) mini-batch pairs whose LoRA gradients have
    cosine <= 0, and the mean cosine. No weights are updated."""
    npo = trainer.model_copy(update={"unlearn_loss": "npo"})
    objective = make_objective(model, tokenizer, layout, task, npo)
    state = TrainState(init_adapter(layout, lora.rank, lora.alpha, seed),
                       next(model.parameters()).device)
    params = state.parameters()
    gen = torch.Generator().manual_seed(seed)
    n_e, n_u = len(objective.edit), len(objective.unlearn)
    cosines = []
    with use_state(state), autocast_for(model, trainer):
        for _ in range(conflict.samples):
            re = torch.randperm(n_e, generator=gen)[: conflict.batch_size]
            ru = torch.randperm(n_u, generator=gen)[: conflict.batch_size]
            g_e = grad_of(objective.edit_loss(re)[0], params)
            g_u = grad_of(objective.unlearn_loss(ru)[0], params)
            cos = float(g_e.dot(g_u) / (g_e.norm() * g_u.norm()).clamp(min=1e-12))
            cosines.append(cos)
    score = sum(c <= 0 for c in cosines) / len(cosines)
    return score, sum(cosines) / len(cosines)


def decide(model, tokenizer, layout: ModelLayout, task: MemoryTask, trainer: TrainerSettings,
           lora: LoraSettings, settings: ConflictSettings) -> ConflictDecision:
    """Score ``task``'s conflict and decide: "split" at or above ``tau``, else "mgda" (or the
    mode the settings force)."""
    score, mean_cos = conflict_score(model, tokenizer, layout, task, trainer, lora, settings,
                                     trainer.seed)
    decision = settings.mode if settings.mode != "auto" else (
        "split" if score >= settings.tau else "mgda")
    logger.info("conflict score %.2f (mean cos %.3f) -> %s", score, mean_cos, decision)
    return ConflictDecision(score, settings.tau, decision, settings.samples, mean_cos)
