"""GRACE (Hartvigsen et al. 2023, "Aging with GRACE"): a key-value codebook at one layer.

The edited layer is the MLP down projection of block ``(2 * (n_layers - 1)) // 3``
(:mod:`benchmarks.methods.layer`). Its *key* for a query is that layer's input (the FFN's
hidden activation) at the prompt's last token. Every key has a deferral radius and a value
vector: when a query's key lies within the radius of its nearest key, that key's value
*replaces* the layer's output at the prompt's last token and at every generated (or
teacher-forced answer) position; otherwise the layer is untouched (the base model).

Adding an edit (GRACE's codebook maintenance, for each training prompt of a piece):

- no key within ``radius + initial radius``: add a key with the initial radius and a value;
- the nearest key carries the same label (kind and target): *expand* its radius to reach the
  new key (no new key; the prompt uses that key's value);
- a different label: *split*: the nearest key's radius and the new key's radius both become
  half their distance, so the two no longer overlap.

The initial radius is ``RADIUS_FRACTION`` (0.1) times the median norm of the first update's
keys: GRACE's epsilon_init is an absolute distance, tuned per model and layer; relative to the
key norm it transfers between models. On SmolLM2-135M (block 19) the keys of "The capital of X
is" for different X lie 0.14-0.19 median norms apart and a paraphrase ("France's capital city
is") 0.7 away, so no radius reaches paraphrases without capturing same- template neighbours
(GRACE's known trade-off); 0.1 keeps those neighbours deferred (0.4 routed every "capital of"
prompt to one edit's value). Values start at the layer's original output for their key (as in
GRACE's code) and are trained with Adam at lr 1.0 (GRACE's) on the edit NLL of the target
tokens (no EOS appended, as GRACE), in verify rounds up to ``budget.max_steps`` steps
(:mod:`benchmarks.methods.verify`). GRACE has no unlearning: for an unlearning piece the value
is trained with NPO (beta 0.1, the engine's) on the forgotten answer instead. No retain term
(GRACE has none). ``update`` adds keys (the sequential protocol); earlier values are frozen.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

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

RADIUS_FRACTION = 0.1
VALUE_LR = 1.0
# GRACE trains on the label tokens alone; one value at every answer position cannot also end
# the answer with EOS (the engine's ``target_eos``) without hurting its first token
EDIT_EOS = False

Label = tuple[str, str]  # (kind, target)


class GraceServed(HookedServed):
    """The base model with a GRACE codebook at one layer."""

    def __init__(self, name: str, model_dir: Path, budget: Budget, seed: int) -> None:
        super().__init__(name, model_dir, budget, seed)
        device = self.model.device
        self.keys = torch.empty(0, 0, device=device)
        self.radii = torch.empty(0, device=device)
        self.values = torch.empty(0, 0, device=device)
        self.labels: list[Label] = []
        self.radius_init: float | None = None
        self.splits = self.expansions = 0
        self._training: torch.Tensor | None = None  # values being trained (appended)

    # ---------------------------------------------------------------- the editor
    def _table(self) -> torch.Tensor:
        return self.values if self._training is None else torch.cat([self.values,
                                                                      self._training])

    def nearest(self, keys: torch.Tensor) -> torch.Tensor:
        """(B,) index of the key whose radius holds each query key, -1 where none does."""
        if not len(self.keys):
            return torch.full((len(keys),), -1, dtype=torch.long, device=keys.device)
        dist, idx = torch.cdist(keys.float(), self.keys).min(-1)
        return torch.where(dist <= self.radii[idx], idx, -1)

    def decide(self, x: torch.Tensor, rows: Rows) -> torch.Tensor:
        return self.nearest(x[torch.arange(len(x), device=x.device), rows.last])

    def apply(self, x: torch.Tensor, out: torch.Tensor, decision: torch.Tensor,
              after: torch.Tensor) -> torch.Tensor:
        use = (decision >= 0)[:, None] & after
        if not bool(use.any()):
            return out
        value = self._table()[decision.clamp(min=0)].to(out.dtype)
        return torch.where(use[..., None], value[:, None, :], out)

    # ---------------------------------------------------------------- keys
    @torch.no_grad()
    def layer_io(self, prompts: Sequence[str], batch_size: int = 32
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """The base layer's (input, output) at each prompt's last token."""
        seen: list[tuple[torch.Tensor, torch.Tensor]] = []

        def capture(module, args, out) -> None:
            seen.append((args[0][:, -1].float(), out[:, -1].float()))

        handle = self.module.register_forward_hook(capture)
        try:
            for start in range(0, len(prompts), batch_size):
                chunk = list(prompts[start:start + batch_size])
                self.model(**encode_batch(self.model, self.tokenizer, chunk))
        finally:
            handle.remove()
        return torch.cat([k for k, _ in seen]), torch.cat([v for _, v in seen])

    def _add_keys(self, pieces: Sequence[PieceSpec]
                  ) -> tuple[list[str], list[int], list[torch.Tensor]]:
        """GRACE's codebook maintenance for every training prompt; (the prompts, the key
        index of each, the initial value of each new key)."""
        prompts = [q for p in pieces for q in verify.training_prompts(p)]
        labels = [(p.kind.value, p.target.strip()) for p in pieces
                  for _ in verify.training_prompts(p)]
        keys, outs = self.layer_io(prompts)
        if self.radius_init is None:
            self.radius_init = RADIUS_FRACTION * float(keys.norm(dim=-1).median())
        if not len(self.keys):
            self.keys = keys.new_empty(0, keys.shape[1])
            self.values = outs.new_empty(0, outs.shape[1])
        eps = self.radius_init
        assigned: list[int] = []
        new_values: list[torch.Tensor] = []
        for key, out, label in zip(keys, outs, labels, strict=True):
            if len(self.keys):
                dist = (self.keys - key).norm(dim=-1)
                d, j = float(dist.min()), int(dist.argmin())
                if d <= float(self.radii[j]) + eps:
                    if self.labels[j] == label:  # expand
                        self.radii[j] = max(float(self.radii[j]), d)
                        self.expansions += 1
                        assigned.append(j)
                        continue
                    # split: neither key's ball reaches the other any more
                    self.radii[j] = d / 2
                    self.splits += 1
                    assigned.append(self._append(key, d / 2, label))
                    new_values.append(out)
                    continue
            assigned.append(self._append(key, eps, label))
            new_values.append(out)
        return prompts, assigned, new_values

    def _append(self, key: torch.Tensor, radius: float, label: Label) -> int:
        self.keys = torch.cat([self.keys, key[None]])
        self.radii = torch.cat([self.radii, self.radii.new_tensor([radius])])
        self.labels.append(label)
        return len(self.keys) - 1

    # ---------------------------------------------------------------- training
    def update(self, pieces: Sequence[PieceSpec], retain: Sequence[RetainSpec] = ()
               ) -> UpdateStats:
        """Add the pieces' keys, train their new values (earlier values frozen)."""
        started = time.perf_counter()
        steps = rounds = 0
        if pieces:
            steps, rounds = self._train(pieces)
        self.last_update = UpdateStats(time.perf_counter() - started, steps, steps,
                                       {"rounds": rounds, "keys": len(self.keys)})
        return self.last_update

    def _train(self, pieces: Sequence[PieceSpec]) -> tuple[int, int]:
        n_old = len(self.values)
        prompts, assigned, new_values = self._add_keys(pieces)
        kinds = [p.kind for p in pieces for _ in verify.training_prompts(p)]
        targets = [p.target for p in pieces for _ in verify.training_prompts(p)]
        if not new_values:  # every prompt expanded an older key: nothing to train
            return 0, 0
        device = self.model.device
        self._training = torch.nn.Parameter(torch.stack(new_values))
        opt = torch.optim.Adam([self._training], lr=VALUE_LR)
        groups = []
        for kind, eos in ((PieceKind.EDIT, EDIT_EOS), (PieceKind.UNLEARN, False)):
            rows = [i for i, k in enumerate(kinds) if k == kind]
            if not rows:
                continue
            batch = losses.tokenize_pairs(self.tokenizer, [(prompts[i], targets[i])
                                                           for i in rows], device, eos)
            decision = torch.tensor([assigned[i] for i in rows], device=device)
            ref = None
            if kind == PieceKind.UNLEARN:
                with torch.no_grad():
                    ref = losses.sequence_logprob(losses.forward_logits(self.model, batch),
                                                  batch.labels)
            groups.append((kind, batch, teacher_forced_rows(batch), decision, ref))

        def loss_and_done() -> tuple[torch.Tensor, bool]:
            total, done = torch.zeros((), device=device), True
            for kind, batch, rows, decision, ref in groups:
                with self.hook.serving(rows, decision):
                    logits = losses.forward_logits(self.model, batch)
                loss, met = piece_loss(kind, logits, batch, ref)
                total, done = total + loss, done and met
            return total, done

        def run_round(n: int) -> int:
            return optimise(opt, loss_and_done, n, self.budget)

        def reached() -> bool:
            return all(verify.pieces_reached(self.generate, self.tokenizer, pieces))

        try:
            result = verify.train_rounds(run_round, reached, self.budget.steps,
                                         self.budget.max_steps)
        finally:
            self.values = torch.cat([self.values[:n_old], self._training.detach()])
            self._training = None
        return result

    # ---------------------------------------------------------------- reporting
    def footprint_bytes(self) -> int:
        """Keys, radii and values."""
        return BYTES_PER_PARAM * (self.keys.numel() + self.radii.numel() + self.values.numel())

    def info(self) -> dict[str, Any]:
        return {"layer": self.layer_name, "keys": len(self.keys), "splits": self.splits,
                "expansions": self.expansions, "radius_init": self.radius_init}

    def routed(self, prompts: Sequence[str]) -> list[bool]:
        """Whether each prompt's key lies within a key's deferral radius."""
        if not prompts or not len(self.keys):
            return [False] * len(prompts)
        keys, _ = self.layer_io(prompts)
        return (self.nearest(keys) >= 0).tolist()


def fit_grace(model_dir: Path, pieces: Sequence[PieceSpec], retain: Sequence[RetainSpec],
              budget: Budget, seed: int, workdir: Path) -> GraceServed:
    """Fit GRACE (see module docstring); ``retain`` is unused (GRACE has no retain term)."""
    torch.manual_seed(seed)
    served = GraceServed("grace", model_dir, budget, seed)
    served.update(pieces, retain)
    return served
