"""Training one memory (a LoRA adapter) on its pieces.

A memory holding only edits or only unlearning requests descends
``L_task + retain_weight * L_retain``. A mixed (multi-task) memory steps along the two-task MGDA
min-norm combination of the normalised edit and unlearn gradients, plus the retention gradient.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from memory_store.config import LoraSettings, TrainerSettings
from memory_store.errors import Cancelled
from memory_store.keys import tokenize
from memory_store.lora.layer import TrainState, use_state
from memory_store.lora.weights import AdapterWeights, init_adapter
from memory_store.models.access import ModelLayout
from memory_store.update import losses

logger = logging.getLogger(__name__)

# a piece's unlearning counts as done once its log-probability dropped this much below the base
UNLEARN_MARGIN = 3.0


@dataclass
class MemoryTask:
    """The (prompt, target) pairs a memory is trained on, paraphrases already expanded."""

    edits: list[tuple[str, str]] = field(default_factory=list)
    unlearns: list[tuple[str, str]] = field(default_factory=list)
    retain: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class TrainStats:
    steps: int
    loss: float
    converged: bool


def _seed_all(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


class Objective:
    """Tokenised data and frozen-base references for one memory's losses."""

    def __init__(self, model, tokenizer, task: MemoryTask, settings: TrainerSettings) -> None:
        self.model = model
        self.settings = settings
        device = next(model.parameters()).device
        unlearns = task.unlearns
        self.idk = settings.unlearn_loss == "idk"
        edit_pairs = list(task.edits)
        if self.idk:  # IDK turns unlearning into an edit towards a refusal
            edit_pairs += [(p, settings.idk_response) for p, _ in unlearns]
        self.edit = (losses.tokenize_pairs(tokenizer, edit_pairs, device, settings.target_eos)
                     if edit_pairs else None)
        self.unlearn = (
            losses.tokenize_pairs(tokenizer, unlearns, device) if unlearns else None
        )
        self.retain = (
            losses.tokenize_pairs(tokenizer, task.retain, device) if task.retain else None
        )
        with torch.no_grad(), use_state(None):
            self.unlearn_ref = (
                losses.sequence_logprob(losses.forward_logits(model, self.unlearn),
                                        self.unlearn.labels)
                if self.unlearn is not None else None
            )
            self.retain_ref = (
                torch.log_softmax(losses.forward_logits(model, self.retain).float(), -1)
                if self.retain is not None else None
            )

    def add_unlearn(self, tokenizer, pairs: list[tuple[str, str]]) -> None:
        """Extend the unlearning set (the base model's log-probabilities as reference)."""
        extra = losses.tokenize_pairs(tokenizer, pairs, self.unlearn.input_ids.device)
        with torch.no_grad(), use_state(None):
            ref = losses.sequence_logprob(losses.forward_logits(self.model, extra), extra.labels)
        self.unlearn = losses.concat(self.unlearn, extra, tokenizer.pad_token_id)
        self.unlearn_ref = torch.cat([self.unlearn_ref, ref])

    @property
    def has_unlearn_term(self) -> bool:
        return self.unlearn is not None and not self.idk

    def edit_loss(self, rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.edit if rows is None else self.edit.select(rows)
        logits = losses.forward_logits(self.model, batch)
        return losses.nll(logits, batch.labels), logits

    def unlearn_loss(self, rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.unlearn if rows is None else self.unlearn.select(rows)
        ref = self.unlearn_ref if rows is None else self.unlearn_ref[rows]
        logits = losses.forward_logits(self.model, batch)
        if self.settings.unlearn_loss == "ga":
            return losses.gradient_ascent(logits, batch.labels), logits
        return losses.npo(logits, batch.labels, ref, self.settings.npo_beta), logits

    def retain_loss(self) -> torch.Tensor:
        logits = losses.forward_logits(self.model, self.retain)
        return losses.retain_kl(logits, self.retain_ref, self.retain.attention_mask)

    def edit_done(self, logits: torch.Tensor) -> bool:
        return bool((losses.target_accuracy(logits, self.edit.labels) >= 1.0).all())

    def unlearn_done(self, logits: torch.Tensor) -> bool:
        labels = self.unlearn.labels
        drop = losses.sequence_logprob(logits, labels) - self.unlearn_ref
        return bool((~losses.first_token_hit(logits, labels)).all() and
                    (drop <= -UNLEARN_MARGIN).all())


def _flat_grad(params: list[torch.nn.Parameter]) -> torch.Tensor:
    return torch.cat([
        (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params
    ])


def grad_of(loss: torch.Tensor, params: list[torch.nn.Parameter]) -> torch.Tensor:
    """The flat gradient of ``loss`` with respect to ``params`` (zeros where unused)."""
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat([
        (g if g is not None else torch.zeros_like(p)).reshape(-1)
        for g, p in zip(grads, params, strict=True)
    ])


def mgda_direction(g_e: torch.Tensor, g_u: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Two-task MGDA on normalised gradients: the min-norm point of their convex hull."""
    g_e = g_e / g_e.norm().clamp(min=1e-12)
    g_u = g_u / g_u.norm().clamp(min=1e-12)
    diff = g_e - g_u
    denom = float(diff.dot(diff))
    a = 0.5 if denom < 1e-12 else min(max(float((g_u - g_e).dot(g_u)) / denom, 0.0), 1.0)
    return a * g_e + (1 - a) * g_u, a


def _assign_grad(params: list[torch.nn.Parameter], flat: torch.Tensor) -> None:
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


def train_memory(
    model, tokenizer, layout: ModelLayout, task: MemoryTask, trainer: TrainerSettings,
    lora: LoraSettings, *, multitask: bool, seed: int,
    progress: Callable[[int, int], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> tuple[AdapterWeights, TrainStats]:
    """Train a fresh adapter on ``task``; deterministic for a given seed."""
    _seed_all(seed)
    objective = Objective(model, tokenizer, task, trainer)
    state = TrainState(init_adapter(layout, lora.rank, lora.alpha, seed),
                       next(model.parameters()).device)
    params = state.parameters()
    opt = torch.optim.Adam(params, lr=trainer.learning_rate, weight_decay=trainer.weight_decay)
    mixed = multitask and objective.edit is not None and objective.has_unlearn_term
    total_steps = 0

    def optimise(steps: int) -> tuple[float, bool]:
        nonlocal total_steps
        loss_value, converged = float("nan"), False
        with use_state(state):
            for step in range(1, steps + 1):
                if should_cancel is not None and should_cancel():
                    raise Cancelled("update cancelled")
                opt.zero_grad(set_to_none=True)
                loss_value, done = _step(objective, params, trainer, mixed)
                opt.step()
                total_steps += 1
                if progress is not None:
                    progress(min(step, trainer.steps), trainer.steps)
                if trainer.early_stop and done and step % trainer.check_every == 0:
                    converged = True
                    break
        return loss_value, converged or _check(objective, state)

    loss_value, converged = optimise(trainer.steps)
    # Teacher forcing only checks the answer right after the prompt; an unlearned model may
    # still say it after a few junk tokens. Generate, and train against every leak found.
    for _ in range(trainer.verify_rounds if objective.has_unlearn_term else 0):
        leaks = _leaks(model, tokenizer, state, task.unlearns)
        if not leaks:
            break
        logger.info("unlearning leak in %d generations: training against them", len(leaks))
        objective.add_unlearn(tokenizer, leaks)
        loss_value, converged = optimise(trainer.steps)
    return state.export(lora.rank, lora.alpha), TrainStats(total_steps, loss_value, converged)


@torch.no_grad()
def _leaks(model, tokenizer, state: TrainState, pairs: list[tuple[str, str]],
           max_new_tokens: int = 16) -> list[tuple[str, str]]:
    """(prompt + generated prefix, target) for each greedy output that still holds target."""
    prompts = [p for p, _ in pairs]
    enc = tokenize(tokenizer, prompts, return_tensors="pt", padding=True,
                   padding_side="left").to(model.device)
    with use_state(state):
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
    texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    leaks = []
    for (prompt, target), text in zip(pairs, texts, strict=True):
        cut = text.find(target.strip())
        if cut >= 0:
            prefix = text[:cut].rstrip(" ") if target.startswith(" ") else text[:cut]
            leaks.append((prompt + prefix, target))
    return leaks


def _step(objective: Objective, params: list, trainer: TrainerSettings,
          mixed: bool) -> tuple[float, bool]:
    """One optimisation step's gradients; returns the loss and whether the targets are met."""
    done = True
    total = 0.0
    if mixed:
        le, logits_e = objective.edit_loss()
        lu, logits_u = objective.unlearn_loss()
        g_e, g_u = grad_of(le, params), grad_of(lu, params)
        direction, _ = mgda_direction(g_e, g_u)
        if objective.retain is not None and trainer.retain_weight > 0:
            lr_ = objective.retain_loss() * trainer.retain_weight
            direction = direction + grad_of(lr_, params)
            total += float(lr_.detach())
        _assign_grad(params, direction)
        total += float(le.detach()) + float(lu.detach())
        return total, objective.edit_done(logits_e) and objective.unlearn_done(logits_u)
    loss = torch.zeros(())
    if objective.edit is not None:
        le, logits_e = objective.edit_loss()
        loss = loss + le
        done = done and objective.edit_done(logits_e)
    if objective.has_unlearn_term:
        lu, logits_u = objective.unlearn_loss()
        loss = loss + lu
        done = done and objective.unlearn_done(logits_u)
    if objective.retain is not None and trainer.retain_weight > 0:
        loss = loss + trainer.retain_weight * objective.retain_loss()
    loss.backward()
    return float(loss.detach()), done


@torch.no_grad()
def _check(objective: Objective, state: TrainState) -> bool:
    ok = True
    with use_state(state):
        if objective.edit is not None:
            ok = ok and objective.edit_done(losses.forward_logits(objective.model, objective.edit))
        if objective.has_unlearn_term:
            ok = ok and objective.unlearn_done(
                losses.forward_logits(objective.model, objective.unlearn))
    return ok
