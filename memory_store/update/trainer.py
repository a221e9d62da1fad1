"""Training one memory (a LoRA adapter) on its pieces.

A memory holding only edits or only unlearning requests descends
``L_task + retain_weight * L_retain``. A mixed (multi-task) memory steps along the two-task MGDA
min-norm combination of the normalised edit and unlearn gradients, plus the retention gradient.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
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
from memory_store.update import prefix as prefix_cache

logger = logging.getLogger(__name__)

# a piece's unlearning counts as done once its log-probability dropped this much below the base
UNLEARN_MARGIN = 3.0
# "auto" compute dtype: bfloat16 only for models at least this large
BF16_MIN_PARAMS = 50_000_000


@dataclass
class MemoryTask:
    """The (prompt, target) pairs a memory is trained on, paraphrases already expanded."""

    edits: list[tuple[str, str]] = field(default_factory=list)
    unlearns: list[tuple[str, str]] = field(default_factory=list)
    retain: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class PairCheck:
    """Whether one (prompt, target) pair of a memory took, checked by greedy generation."""

    kind: str  # "edit" or "unlearn"
    prompt: str
    target: str
    reached: bool
    output: str  # the greedy output it was judged on


@dataclass
class TrainStats:
    steps: int
    loss: float
    converged: bool
    checks: list[PairCheck] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


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

    def edit_logits(self) -> torch.Tensor:
        return losses.forward_logits(self.model, self.edit)

    def unlearn_logits(self) -> torch.Tensor:
        return losses.forward_logits(self.model, self.unlearn)

    def edit_done(self, logits: torch.Tensor) -> bool:
        return bool((losses.target_accuracy(logits, self.edit.labels) >= 1.0).all())

    def unlearn_done(self, logits: torch.Tensor) -> bool:
        labels = self.unlearn.labels
        drop = losses.sequence_logprob(logits, labels) - self.unlearn_ref
        return bool((~losses.first_token_hit(logits, labels)).all() and
                    (drop <= -UNLEARN_MARGIN).all())


class FastObjective(Objective):
    """The same losses as ``Objective``, computed faster (LOKA.md's losses, TrainerSettings'
    speed fields): the frozen blocks below the LoRA band run once per batch
    (``memory_store.update.prefix``), the output head only at the positions a loss reads, and the
    retention KL on the last ``retain_positions`` positions of each retention prompt. Its
    stopping rule is stricter: edit targets need ``edit_min_prob`` per token, unlearned answers
    ``unlearn_max_prob``."""

    def __init__(self, model, tokenizer, layout: ModelLayout, task: MemoryTask,
                 settings: TrainerSettings) -> None:
        self.model = model
        self.layout = layout
        self.settings = settings
        self.eos = tokenizer.eos_token_id
        device = next(model.parameters()).device
        self.idk = settings.unlearn_loss == "idk"
        edit_pairs = list(task.edits)
        if self.idk:
            edit_pairs += [(p, settings.idk_response) for p, _ in task.unlearns]
        self.edit = self._batch(tokenizer, edit_pairs, device, settings.target_eos)
        self.unlearn = self._batch(tokenizer, task.unlearns, device, False)
        self.retain = self._batch(tokenizer, task.retain, device, False)
        self.edit_at = losses.target_positions(self.edit) if self.edit is not None else None
        self.unlearn_at = (losses.target_positions(self.unlearn)
                           if self.unlearn is not None else None)
        self.retain_at = (self._retain_positions(self.retain)
                          if self.retain is not None else None)
        with torch.no_grad(), use_state(None):
            self.unlearn_ref = (
                losses.flat_logprob(self._logits(self.unlearn, self.unlearn_at),
                                    self.unlearn_at, len(self.unlearn))
                if self.unlearn is not None else None)
            self.retain_ref = (
                torch.log_softmax(self._logits(self.retain, self.retain_at).float(), -1)
                if self.retain is not None else None)

    def _batch(self, tokenizer, pairs, device, eos: bool) -> losses.TokenBatch | None:
        if not pairs:
            return None
        batch = losses.tokenize_pairs(tokenizer, pairs, device, eos)
        if self.settings.prefix_cache:
            with use_state(None):
                batch.prefix = prefix_cache.prefix_hidden(self.model, self.layout,
                                                          batch.input_ids, batch.attention_mask)
        return batch

    def _retain_positions(self, batch: losses.TokenBatch) -> losses.Positions:
        n = self.settings.retain_positions
        at = losses.last_positions(batch, n)
        if n <= 0:
            return at
        # the positions predicting a retention target are kept as well
        tgt = losses.target_positions(batch)
        rows = torch.cat([at.rows, tgt.rows])
        pos = torch.cat([at.pos, tgt.pos])
        key = torch.unique(rows * batch.input_ids.shape[1] + pos)
        width = batch.input_ids.shape[1]
        return losses.Positions(key // width, key % width, torch.full_like(key, -100))

    def _logits(self, batch: losses.TokenBatch, at: losses.Positions) -> torch.Tensor:
        if self.settings.head_positions_only:
            return losses.position_logits(self.model, batch, at)
        return losses.forward_logits(self.model, batch)[at.rows, at.pos]

    def add_unlearn(self, tokenizer, pairs: list[tuple[str, str]]) -> None:
        extra = self._batch(tokenizer, pairs, self.unlearn.input_ids.device, False)
        at = losses.target_positions(extra)
        with torch.no_grad(), use_state(None):
            ref = losses.flat_logprob(self._logits(extra, at), at, len(extra))
        prefix = None
        merged = losses.concat(self.unlearn, extra, tokenizer.pad_token_id)
        if self.unlearn.prefix is not None and extra.prefix is not None:
            width = merged.input_ids.shape[1]
            prefix = torch.cat([torch.nn.functional.pad(t, (0, 0, 0, width - t.shape[1]))
                                for t in (self.unlearn.prefix, extra.prefix)])
        merged.prefix = prefix
        self.unlearn = merged
        self.unlearn_at = losses.target_positions(merged)
        self.unlearn_ref = torch.cat([self.unlearn_ref, ref])

    def edit_loss(self, rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        batch, at = self._subset(self.edit, rows)
        logits = self._logits(batch, at)
        return losses.flat_nll(logits, at), logits

    def unlearn_loss(self, rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        batch, at = self._subset(self.unlearn, rows)
        ref = self.unlearn_ref if rows is None else self.unlearn_ref[rows]
        logits = self._logits(batch, at)
        if self.settings.unlearn_loss == "ga":
            return -losses.flat_nll(logits, at), logits
        ratio = losses.flat_logprob(logits, at, len(batch)) - ref
        beta = self.settings.npo_beta
        return -(2.0 / beta) * torch.nn.functional.logsigmoid(-beta * ratio).mean(), logits

    def _subset(self, batch: losses.TokenBatch, rows: torch.Tensor | None
                ) -> tuple[losses.TokenBatch, losses.Positions]:
        if rows is None:
            at = self.edit_at if batch is self.edit else self.unlearn_at
            return batch, at
        sub = batch.select(rows)
        return sub, losses.target_positions(sub)

    def retain_loss(self) -> torch.Tensor:
        return losses.flat_kl(self._logits(self.retain, self.retain_at), self.retain_ref)

    def edit_logits(self) -> torch.Tensor:
        return self._logits(self.edit, self.edit_at)

    def unlearn_logits(self) -> torch.Tensor:
        return self._logits(self.unlearn, self.unlearn_at)

    def edit_rows_done(self, logits: torch.Tensor) -> torch.Tensor:
        at, n = self.edit_at, len(self.edit)
        ok = losses.flat_accuracy(logits, at, n) >= 1.0
        if self.settings.edit_min_prob > 0:
            p = torch.softmax(logits.float(), -1).gather(-1, at.labels.unsqueeze(-1)).squeeze(-1)
            p = torch.where(at.labels == self.eos, torch.ones_like(p), p) if self.eos is not None \
                else p
            low = torch.ones(n, dtype=p.dtype).scatter_reduce(0, at.rows, p, reduce="amin")
            ok = ok & (low >= self.settings.edit_min_prob)
        return ok

    def unlearn_rows_done(self, logits: torch.Tensor) -> torch.Tensor:
        at, n = self.unlearn_at, len(self.unlearn)
        logp = losses.flat_logprob(logits, at, n)
        hit = losses.flat_first_token_hit(logits, at)
        return (~hit & (logp - self.unlearn_ref <= -UNLEARN_MARGIN)
                & (logp.exp() <= self.settings.unlearn_max_prob))

    def edit_done(self, logits: torch.Tensor) -> bool:
        return bool(self.edit_rows_done(logits).all())

    def unlearn_done(self, logits: torch.Tensor) -> bool:
        return bool(self.unlearn_rows_done(logits).all())


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


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AMX or AVX512-BF16; /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = set(fh.read().split())
    except OSError:
        return False
    return bool(flags & {"amx_bf16", "avx512_bf16"})


def autocast_for(model, trainer: TrainerSettings) -> contextlib.AbstractContextManager:
    """The autocast context of the training steps (see ``TrainerSettings.compute_dtype``)."""
    param = next(model.parameters())
    want = trainer.compute_dtype
    if want == "auto":
        # small models are bound by per-op overhead, not by matmuls: bf16 only costs casts
        big = sum(p.numel() for p in model.parameters()) >= BF16_MIN_PARAMS
        want = ("bfloat16" if big and param.device.type == "cpu" and param.dtype == torch.float32
                and cpu_has_native_bf16() else "float32")
    if want == "float32" or param.dtype != torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(param.device.type, dtype=torch.bfloat16)


def make_objective(model, tokenizer, layout: ModelLayout, task: MemoryTask,
                   trainer: TrainerSettings) -> Objective:
    if trainer.prefix_cache or trainer.head_positions_only:
        return FastObjective(model, tokenizer, layout, task, trainer)
    return Objective(model, tokenizer, task, trainer)


def train_memory(
    model, tokenizer, layout: ModelLayout, task: MemoryTask, trainer: TrainerSettings,
    lora: LoraSettings, *, multitask: bool, seed: int,
    progress: Callable[[int, int], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> tuple[AdapterWeights, TrainStats]:
    """Train a fresh adapter on ``task``; deterministic for a given seed.

    ``trainer.steps`` steps (fewer when every target is met earlier), then: generate greedily
    for every pair; an unlearned answer found in an output becomes an extra unlearning example
    (at most ``verify_rounds`` times); while a pair is not reached, train ``steps`` more, up to
    ``max_steps`` in all. ``TrainStats.checks`` says, per pair, whether it was reached."""
    clock = _Clock()
    _seed_all(seed)
    objective = make_objective(model, tokenizer, layout, task, trainer)
    clock.lap("prepare")
    state = TrainState(init_adapter(layout, lora.rank, lora.alpha, seed),
                       next(model.parameters()).device)
    params = state.parameters()
    opt = torch.optim.Adam(params, lr=trainer.learning_rate, weight_decay=trainer.weight_decay)
    mixed = multitask and objective.edit is not None and objective.has_unlearn_term
    total_steps = 0
    cap = max(trainer.max_steps, trainer.steps)

    def optimise(steps: int) -> tuple[float, bool]:
        nonlocal total_steps
        loss_value, converged = float("nan"), False
        with use_state(state), autocast_for(model, trainer):
            for step in range(1, steps + 1):
                if should_cancel is not None and should_cancel():
                    raise Cancelled("update cancelled")
                opt.zero_grad(set_to_none=True)
                loss_value, done = _step(objective, params, trainer, mixed)
                opt.step()
                total_steps += 1
                if progress is not None:
                    progress(min(total_steps, trainer.steps), trainer.steps)
                if trainer.early_stop and done and step % trainer.check_every == 0:
                    converged = True
                    break
        clock.lap("steps")
        converged = converged or _check(objective, state)
        clock.lap("check")
        return loss_value, converged

    loss_value, converged = optimise(trainer.steps)
    leak_rounds = trainer.verify_rounds if objective.has_unlearn_term else 0
    while True:
        # Teacher forcing only checks the answer right after the prompt; an unlearned model
        # may still say it after a few junk tokens. Generate, and train against every leak.
        checks = _verify(model, tokenizer, state, task)
        clock.lap("verify")
        reached = converged and all(c.reached for c in checks)
        if reached or total_steps >= cap:
            break
        leaks = [(c.prompt + _leak_prefix(c), c.target) for c in checks
                 if c.kind == "unlearn" and not c.reached]
        if leaks and leak_rounds > 0:
            leak_rounds -= 1
            logger.info("unlearning leak in %d generations: training against them", len(leaks))
            objective.add_unlearn(tokenizer, leaks)
        elif converged and not any(c.kind == "edit" and not c.reached for c in checks):
            break  # only leaks remain and no leak rounds are left
        loss_value, converged = optimise(min(trainer.steps, cap - total_steps))
    return state.export(lora.rank, lora.alpha), TrainStats(
        total_steps, loss_value, converged and all(c.reached for c in checks), checks,
        clock.seconds)


class _Clock:
    """Wall time per named phase of one memory's training."""

    def __init__(self) -> None:
        self.last = time.perf_counter()
        self.seconds: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - self.last
        self.last = now


def _leak_prefix(check: PairCheck) -> str:
    cut = check.output.find(check.target.strip())
    text = check.output[:max(cut, 0)]
    return text.rstrip(" ") if check.target.startswith(" ") else text


def _generate(model, tokenizer, state: TrainState, prompts: list[str],
              max_new_tokens: int) -> list[str]:
    enc = tokenize(tokenizer, prompts, return_tensors="pt", padding=True,
                   padding_side="left").to(model.device)
    with use_state(state):
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
    return tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)


@torch.no_grad()
def _verify(model, tokenizer, state: TrainState, task: MemoryTask,
            max_new_tokens: int = 16) -> list[PairCheck]:
    """Greedy generation with the adapter: each edit pair must start with its target, no
    unlearning pair may contain its answer."""
    checks: list[PairCheck] = []
    if task.edits:
        n = max(len(tokenize(tokenizer, t, add_special_tokens=False)["input_ids"])
                for _, t in task.edits)
        texts = _generate(model, tokenizer, state, [p for p, _ in task.edits], n + 1)
        checks += [PairCheck("edit", p, t, text.strip().startswith(t.strip()), text)
                   for (p, t), text in zip(task.edits, texts, strict=True)]
    if task.unlearns:
        texts = _generate(model, tokenizer, state, [p for p, _ in task.unlearns],
                          max_new_tokens)
        checks += [PairCheck("unlearn", p, t, t.strip() not in text, text)
                   for (p, t), text in zip(task.unlearns, texts, strict=True)]
    return checks


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
            ok = ok and objective.edit_done(objective.edit_logits())
        if objective.has_unlearn_term:
            ok = ok and objective.unlearn_done(objective.unlearn_logits())
    return ok
