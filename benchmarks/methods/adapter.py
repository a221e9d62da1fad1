"""Single-adapter baselines: one LoRA adapter, applied to every query, trained on the edits
and the unlearning requests together.

Every recipe trains edits by NLL (every method must do both tasks); they differ in the
unlearning loss and the retain term:

- ``ft_lora``: NLL on edits + NPO on unlearning (the joint loss, no retain term);
- ``ga``: NLL + gradient ascent;
- ``grad_diff``: NLL + gradient ascent + NLL on the retain set;
- ``npo_kl``: NLL + NPO + KL(p_ref || p_theta) on the retain set;
- ``simnpo``: NLL + SimNPO (Fan et al. 2024: NPO without a reference model, on the
  length-normalised log-probability, with a reward margin) + NLL on the retain set (SimNPO
  trains with a retain NLL term; weight 1 here, as GradDiff's).

The adapter has the same shape (rank, layers) as a LOKA memory and uses the engine's losses,
LoRA wrappers and batched generator.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from benchmarks.methods import verify
from benchmarks.methods.base import Budget, UpdateStats, adapter_bytes
from benchmarks.methods.predict import teacher_forced_argmax
from memory_store.config import KeySettings, LoraSettings, TrainerSettings
from memory_store.lora.layer import TrainState, inject, use_state
from memory_store.lora.weights import AdapterWeights, init_adapter
from memory_store.models.access import describe, load_model
from memory_store.serving.batching import BatchGenerator, RowPlan
from memory_store.serving.lora import BatchState
from memory_store.types import PieceKind, PieceSpec, RetainSpec, Route
from memory_store.update import losses
from memory_store.update.trainer import MemoryTask, Objective


@dataclass(frozen=True)
class Recipe:
    """How a single adapter learns: its unlearning loss and its retain term."""

    unlearn: Literal["npo", "ga", "simnpo"]
    retain: Literal["none", "nll", "kl"]


RECIPES: dict[str, Recipe] = {
    "ft_lora": Recipe("npo", "none"),
    "ga": Recipe("ga", "none"),
    "grad_diff": Recipe("ga", "nll"),
    "npo_kl": Recipe("npo", "kl"),
    "simnpo": Recipe("simnpo", "nll"),
}

# SimNPO's inverse temperature and reward margin: our reading of the SimNPO paper's TOFU
# setting (not re-checked against the paper's tables; open-unlearning's default is beta 4.5)
SIMNPO_BETA = 2.5
SIMNPO_GAMMA = 0.0


def simnpo_loss(logits: torch.Tensor, labels: torch.Tensor, beta: float = SIMNPO_BETA,
                gamma: float = SIMNPO_GAMMA) -> torch.Tensor:
    """SimNPO: ``-(2/beta) log sigmoid(-(beta/|y|) log p(y|x) - gamma)``, the mean over rows
    (no reference model; ``|y|`` the answer's length in tokens)."""
    n_tokens = (labels[:, 1:] != -100).sum(-1).clamp(min=1)
    mean_logprob = losses.sequence_logprob(logits, labels) / n_tokens
    return -(2.0 / beta) * torch.nn.functional.logsigmoid(-beta * mean_logprob - gamma).mean()


class AdapterServed:
    """The base model with one adapter (or none: the ``base`` reference)."""

    def __init__(self, name: str, model_dir: Path, budget: Budget, seed: int,
                 recipe: Recipe | None) -> None:
        self.name = name
        self.budget = budget
        self.seed = seed
        self.recipe = recipe
        self.model, self.tokenizer = load_model(model_dir, device=budget.device)
        self.layout = describe(self.model, LoraSettings(rank=budget.rank, alpha=budget.alpha),
                               KeySettings())
        inject(self.model, self.layout)
        self.generator = BatchGenerator(self.model, self.tokenizer, self.layout, "last")
        self.weights: AdapterWeights | None = (
            init_adapter(self.layout, budget.rank, budget.alpha, seed) if recipe else None)
        self.rng = torch.Generator().manual_seed(seed)
        self.n_updates = 0
        self.last_update = UpdateStats(0.0, 0)

    # ---------------------------------------------------------------- serving
    def generate(self, prompts: Sequence[str], max_new_tokens: int) -> list[str]:
        plans = [RowPlan(p, max_new_tokens, auto=False, adapter=self.weights,
                         route=Route(None, 0.0, None)) for p in prompts]
        if not plans:
            return []
        rows = self.generator.generate(plans, lambda raw: [])
        return [r.text for r in rows]

    @torch.no_grad()
    def score(self, pairs: Sequence[tuple[str, str]], batch_size: int = 32
              ) -> list[tuple[float, float]]:
        out: list[tuple[float, float]] = []
        for start in range(0, len(pairs), batch_size):
            chunk = list(pairs[start:start + batch_size])
            batch = losses.tokenize_pairs(self.tokenizer, chunk, self.model.device)
            state = BatchState([self.weights] * len(chunk), self.model.dtype, self.model.device)
            with use_state(state):
                logits = losses.forward_logits(self.model, batch)
            lp = losses.sequence_logprob(logits, batch.labels)
            acc = losses.target_accuracy(logits, batch.labels)
            out += [(float(a), float(b)) for a, b in zip(lp, acc, strict=True)]
        return out

    def predictions(self, pairs: Sequence[tuple[str, str]]) -> list[list[int]]:
        def adapter(chunk: list[tuple[str, str]]):
            return use_state(BatchState([self.weights] * len(chunk), self.model.dtype,
                                        self.model.device))
        return teacher_forced_argmax(self.model, self.tokenizer, pairs, adapter)

    def footprint_bytes(self) -> int:
        return 0 if self.weights is None else adapter_bytes(self.layout, self.budget.rank)

    def info(self) -> dict[str, Any]:
        return {"adapters": int(self.weights is not None), "updates": self.n_updates}

    def close(self) -> None:
        self.generator = None  # type: ignore[assignment]

    # ---------------------------------------------------------------- training
    def update(self, pieces: Sequence[PieceSpec], retain: Sequence[RetainSpec] = ()
               ) -> UpdateStats:
        """Train the adapter further on ``pieces`` only (sequential fine-tuning: earlier pieces
        are not replayed), in verify rounds up to ``budget.max_steps`` epochs."""
        started = time.perf_counter()
        steps = epochs = rounds = 0
        if self.recipe is not None and pieces:
            steps, epochs, rounds = self._train(pieces, retain)
        self.n_updates += 1
        # each piece takes part in one step per epoch
        self.last_update = UpdateStats(time.perf_counter() - started, steps, epochs,
                                       {"epochs": epochs, "rounds": rounds})
        return self.last_update

    def _objective(self, pieces: Sequence[PieceSpec], retain: Sequence[RetainSpec]
                   ) -> tuple[Objective, list[tuple[PieceKind, list[int]]]]:
        task = MemoryTask()
        rows: list[tuple[PieceKind, list[int]]] = []
        for p in pieces:
            pairs = [(q, p.target) for q in (p.prompt, *p.paraphrases)]
            dest = task.edits if p.kind == PieceKind.EDIT else task.unlearns
            rows.append((p.kind, list(range(len(dest), len(dest) + len(pairs)))))
            dest.extend(pairs)
        if self.recipe.retain != "none" and self.budget.max_retain > 0:
            task.retain = [(r.prompt, r.target) for r in retain]
        # SimNPO's loss is computed here (``_loss``); the objective holds its data
        unlearn = "npo" if self.recipe.unlearn == "simnpo" else self.recipe.unlearn
        settings = TrainerSettings(steps=self.budget.steps,
                                   learning_rate=self.budget.learning_rate,
                                   unlearn_loss=unlearn, seed=self.seed)
        with use_state(None):
            objective = Objective(self.model, self.tokenizer, task, settings)
        return objective, rows

    def _train(self, pieces: Sequence[PieceSpec], retain: Sequence[RetainSpec]
               ) -> tuple[int, int, int]:
        """Rounds of ``budget.steps`` epochs while the training prompts' greedy outputs miss
        their targets, up to ``budget.max_steps`` epochs; (optimiser steps, epochs, rounds)."""
        objective, rows = self._objective(pieces, retain)
        retain_nll = None
        if self.recipe.retain == "nll" and objective.retain is not None:
            # GradDiff descends the retain answers' NLL (with EOS, as the base was trained)
            pairs = [(r.prompt, r.target) for r in retain]
            retain_nll = losses.tokenize_pairs(self.tokenizer, pairs, self.model.device, True)
        n_retain = len(objective.retain) if objective.retain is not None else 0
        state = TrainState(self.weights, self.model.device)
        params = state.parameters()
        opt = torch.optim.Adam(params, lr=self.budget.learning_rate)
        size = self.budget.batch_pieces
        n_batches = math.ceil(len(pieces) / size)
        steps = 0

        def run_round(epochs: int) -> int:
            """Up to ``epochs`` epochs (fewer once the targets are met); the epochs run."""
            nonlocal steps
            epoch = 0
            with use_state(state):
                for epoch in range(1, epochs + 1):
                    order = torch.randperm(len(pieces), generator=self.rng).tolist()
                    for b in range(n_batches):
                        chosen = [rows[i] for i in order[b * size:(b + 1) * size]]
                        # the retain rows of this step: the next max_retain of the retain set
                        window = [(steps * self.budget.max_retain + k) % max(n_retain, 1)
                                  for k in range(min(self.budget.max_retain, n_retain))]
                        opt.zero_grad(set_to_none=True)
                        self._loss(objective, chosen, torch.tensor(window, dtype=torch.long),
                                   retain_nll).backward()
                        opt.step()
                        steps += 1
                    if (self.budget.early_stop and epoch % self.budget.check_every == 0
                            and self._done(objective)):
                        break
            self.weights = state.export(self.budget.rank, self.budget.alpha)
            return epoch

        def reached() -> bool:
            return all(verify.pieces_reached(self.generate, self.tokenizer, pieces))

        epochs, rounds = verify.train_rounds(run_round, reached, self.budget.steps,
                                             self.budget.max_steps)
        return steps, epochs, rounds

    def _loss(self, objective: Objective, chosen: list[tuple[PieceKind, list[int]]],
              retain_rows: torch.Tensor, retain_nll: losses.TokenBatch | None) -> torch.Tensor:
        e_rows = [r for kind, rs in chosen if kind == PieceKind.EDIT for r in rs]
        u_rows = [r for kind, rs in chosen if kind == PieceKind.UNLEARN for r in rs]
        loss = torch.zeros((), device=self.model.device)
        if e_rows:
            loss = loss + objective.edit_loss(torch.tensor(e_rows))[0]
        if u_rows and self.recipe.unlearn == "simnpo":
            batch = objective.unlearn.select(torch.tensor(u_rows))
            loss = loss + simnpo_loss(losses.forward_logits(self.model, batch), batch.labels)
        elif u_rows:
            loss = loss + objective.unlearn_loss(torch.tensor(u_rows))[0]
        if not len(retain_rows):
            return loss
        if self.recipe.retain == "kl":
            batch = objective.retain.select(retain_rows)
            logits = losses.forward_logits(self.model, batch)
            loss = loss + losses.retain_kl(logits, objective.retain_ref[retain_rows],
                                           batch.attention_mask)
        elif retain_nll is not None:
            batch = retain_nll.select(retain_rows)
            loss = loss + losses.nll(losses.forward_logits(self.model, batch), batch.labels)
        return loss

    @torch.no_grad()
    def _done(self, objective: Objective) -> bool:
        """The engine's stopping rule, on every piece: each edit target reproduced
        (teacher-forced argmax) and each unlearn target well below the base."""
        if objective.edit is not None and not objective.edit_done(
                losses.forward_logits(self.model, objective.edit)):
            return False
        return objective.unlearn is None or objective.unlearn_done(
            losses.forward_logits(self.model, objective.unlearn))


def fit_adapter(name: str):
    """The fit entry point of the single-adapter recipe ``name`` (or the base reference)."""
    recipe = RECIPES.get(name)

    def fit(model_dir: Path, pieces: Sequence[PieceSpec], retain: Sequence[RetainSpec],
            budget: Budget, seed: int, workdir: Path) -> AdapterServed:
        served = AdapterServed(name, model_dir, budget, seed, recipe)
        if recipe is not None:
            served.update(pieces, retain)
        return served

    fit.__name__ = f"fit_{name}"
    fit.__doc__ = f"Fit the {name!r} single-adapter method (see module docstring)."
    return fit
