"""WISE-style side memory (Wang et al. 2024, "WISE: Rethinking the Knowledge Memory for
Lifelong Model Editing"), simplified to one side memory.

The side memory is a trainable copy ``W_side`` of one FFN down projection (block
``(2 * (n_layers - 1)) // 3``, as GRACE; :mod:`benchmarks.methods.layer`), stored as
``D = W_side - W_main``. A query's *activation score* is WISE's
``||(W_side - W_main) a||``, averaged over the prompt's tokens (``a`` the layer's input). A query
whose score exceeds the threshold is served by the side memory (the layer computes
``a W_side``, at every position of that query), any other by the main memory (the base model).

Training (edits by NLL, unlearning pieces by NPO, beta 0.1, with the side memory on), plus
WISE's routing loss on the pieces' prompts ``e`` and the retain prompts ``i`` (irrelevant):
``ReLU(s_i - alpha) + ReLU(beta - s_e) + ReLU(gamma - (s_e - s_i))``. WISE's margins
(alpha, beta, gamma) = (5, 20, 10) are absolute numbers for LLaMA-size activations; here they keep
WISE's ratios and scale with the base layer's median output norm ``nu`` on the training
prompts: (0.25, 1.0, 0.5) x nu. The threshold is ``THRESHOLD_FRACTION`` (0.88) times the
lowest score of any prompt trained so far, recomputed after each round. Adam at the budget's
learning rate, in verify rounds up to ``budget.max_steps`` steps (:mod:`benchmarks.methods.verify`).

Simplified relative to WISE: one side memory, no knowledge sharding into random subspaces and
no merging of shards (WISE's lifelong machinery); ``update`` keeps training the same side
memory on the new pieces only (earlier pieces are not replayed) and re-sets the threshold
over every prompt trained so far. WISE has no unlearning; NPO on the side memory stands in.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.methods import verify
from benchmarks.methods.base import BYTES_PER_PARAM, Budget, UpdateStats
from benchmarks.methods.layer import (
    HookedServed,
    Rows,
    optimise,
    piece_loss,
    teacher_forced_rows,
)
from memory_store.keys import encode_batch
from memory_store.types import PieceKind, PieceSpec, RetainSpec
from memory_store.update import losses

logger = logging.getLogger(__name__)

THRESHOLD_FRACTION = 0.88
MARGINS = (0.25, 1.0, 0.5)  # WISE's (alpha, beta, gamma) = (5, 20, 10), relative
INIT_STD = 1e-3  # D starts near zero (W_side ~ W_main); exactly zero has no score gradient


class WiseServed(HookedServed):
    """The base model with a WISE side memory at one FFN down projection."""

    def __init__(self, name: str, model_dir: Path, budget: Budget, seed: int) -> None:
        super().__init__(name, model_dir, budget, seed)
        d_in, d_out = self._dims()
        gen = torch.Generator().manual_seed(seed)
        self.delta = torch.nn.Parameter(
            (torch.randn(d_in, d_out, generator=gen) * INIT_STD).to(self.model.device))
        self.threshold = float("inf")  # nothing routed before the first update
        self.trained: list[tuple[torch.Tensor, torch.Tensor]] = []  # (acts, mask) per update
        self.scale: float | None = None

    def _dims(self) -> tuple[int, int]:
        w = self.module.weight
        # GPT-2's Conv1D stores (in, out); nn.Linear (out, in)
        return (w.shape[0], w.shape[1]) if type(self.module).__name__ == "Conv1D" else (
            w.shape[1], w.shape[0])

    # ---------------------------------------------------------------- the editor
    def scores(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B,) activation score ``||(W_side - W_main) a||`` averaged over the masked tokens."""
        per_token = (x.float() @ self.delta).norm(dim=-1)
        m = mask.float()
        return (per_token * m).sum(-1) / m.sum(-1).clamp(min=1)

    def decide(self, x: torch.Tensor, rows: Rows) -> torch.Tensor:
        return self.scores(x, rows.prompt_mask) > self.threshold

    def apply(self, x: torch.Tensor, out: torch.Tensor, decision: torch.Tensor,
              after: torch.Tensor) -> torch.Tensor:
        if not bool(decision.any()):
            return out
        side = (x.float() @ self.delta).to(out.dtype)
        return out + side * decision[:, None, None].to(out.dtype)

    @torch.no_grad()
    def layer_inputs(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor,
                                                            torch.Tensor]:
        """The base layer's input (B, T, d_in) over each prompt's tokens, their mask, and the
        layer's output norm per token (B, T)."""
        seen: list[tuple[torch.Tensor, torch.Tensor]] = []

        def capture(module, args, out) -> None:
            seen.append((args[0].float(), out.float().norm(dim=-1)))

        enc = encode_batch(self.model, self.tokenizer, list(prompts))
        handle = self.module.register_forward_hook(capture)
        try:
            self.model(**enc)
        finally:
            handle.remove()
        return seen[0][0], enc["attention_mask"].bool(), seen[0][1]

    def routed(self, prompts: Sequence[str]) -> list[bool]:
        """Whether each prompt is served by the side memory."""
        out: list[bool] = []
        for start in range(0, len(prompts), 32):
            x, mask, _ = self.layer_inputs(prompts[start:start + 32])
            with torch.no_grad():
                out += (self.scores(x, mask) > self.threshold).tolist()
        return out

    def _set_threshold(self) -> None:
        with torch.no_grad():
            lowest = min(float(self.scores(x, m).min()) for x, m in self.trained)
        self.threshold = THRESHOLD_FRACTION * lowest

    # ---------------------------------------------------------------- training
    def update(self, pieces: Sequence[PieceSpec], retain: Sequence[RetainSpec] = ()
               ) -> UpdateStats:
        started = time.perf_counter()
        steps = rounds = 0
        if pieces:
            steps, rounds = self._train(pieces, retain)
        self.last_update = UpdateStats(time.perf_counter() - started, steps, steps,
                                       {"rounds": rounds, "threshold": self.threshold})
        return self.last_update

    def _train(self, pieces: Sequence[PieceSpec], retain: Sequence[RetainSpec]
               ) -> tuple[int, int]:
        device = self.model.device
        prompts = [q for p in pieces for q in verify.training_prompts(p)]
        x_e, m_e, out_norm = self.layer_inputs(prompts)
        if self.scale is None:
            self.scale = float(out_norm[m_e].median())
        alpha, beta, gamma = (f * self.scale for f in MARGINS)
        irrelevant = [r.prompt for r in retain][: max(self.budget.max_retain, 1)]
        x_i, m_i = (self.layer_inputs(irrelevant)[:2] if irrelevant and self.budget.max_retain
                    else (None, None))
        self.trained.append((x_e, m_e))
        groups = []
        for kind, eos in ((PieceKind.EDIT, True), (PieceKind.UNLEARN, False)):
            pairs = [(q, p.target) for p in pieces if p.kind == kind
                     for q in verify.training_prompts(p)]
            if not pairs:
                continue
            batch = losses.tokenize_pairs(self.tokenizer, pairs, device, eos)
            ref = None
            if kind == PieceKind.UNLEARN:
                with torch.no_grad():
                    ref = losses.sequence_logprob(losses.forward_logits(self.model, batch),
                                                  batch.labels)
            on = torch.ones(len(pairs), dtype=torch.bool, device=device)
            groups.append((kind, batch, teacher_forced_rows(batch), on, ref))
        opt = torch.optim.Adam([self.delta], lr=self.budget.learning_rate)

        def routing_loss() -> torch.Tensor:
            s_e = self.scores(x_e, m_e)
            loss = F.relu(beta - s_e).mean()
            if x_i is not None:
                s_i = self.scores(x_i, m_i)
                loss = loss + F.relu(s_i - alpha).mean()
                loss = loss + F.relu(gamma - (s_e[:, None] - s_i[None, :])).mean()
            return loss

        def loss_and_done() -> tuple[torch.Tensor, bool]:
            total, done = routing_loss(), True
            for kind, batch, rows, on, ref in groups:
                with self.hook.serving(rows, on):
                    logits = losses.forward_logits(self.model, batch)
                loss, met = piece_loss(kind, logits, batch, ref)
                total, done = total + loss, done and met
            return total, done

        def run_round(n: int) -> int:
            taken = optimise(opt, loss_and_done, n, self.budget)
            self._set_threshold()
            return taken

        def reached() -> bool:
            return all(verify.pieces_reached(self.generate, self.tokenizer, pieces))

        return verify.train_rounds(run_round, reached, self.budget.steps, self.budget.max_steps)

    # ---------------------------------------------------------------- reporting
    def footprint_bytes(self) -> int:
        """The side memory (one down projection) and its threshold."""
        return BYTES_PER_PARAM * (self.delta.numel() + 1)

    def info(self) -> dict[str, Any]:
        return {"layer": self.layer_name, "threshold": self.threshold, "scale": self.scale,
                "trained_prompts": sum(len(x) for x, _ in self.trained)}


def fit_wise(model_dir: Path, pieces: Sequence[PieceSpec], retain: Sequence[RetainSpec],
             budget: Budget, seed: int, workdir: Path) -> WiseServed:
    """Fit the WISE-style side memory (see module docstring); ``retain`` prompts are the
    irrelevant inputs of its routing loss."""
    torch.manual_seed(seed)
    served = WiseServed("wise", model_dir, budget, seed)
    served.update(pieces, retain)
    return served
