"""The conflict histogram (the paper's Figure 1): cosine between the edit and the unlearn
gradient on a fresh LoRA memory, for (edit, unlearn) piece pairs about the same author
(in-profile) and about different authors (out-profile).

Gradients are taken exactly as LOKA's conflict score takes them (NLL on the edit target, NPO on
the forgotten answer, on a freshly initialised adapter, no weight update), one piece per side.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.methods import Budget
from benchmarks.metrics import mean
from benchmarks.protocol import Case, Setting
from memory_store.config import KeySettings, LoraSettings, TrainerSettings
from memory_store.lora.layer import TrainState, inject, use_state
from memory_store.lora.weights import init_adapter
from memory_store.models.access import describe, load_model
from memory_store.update.trainer import MemoryTask, Objective


def _flat(loss: torch.Tensor, params: list[torch.nn.Parameter]) -> torch.Tensor:
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                      for g, p in zip(grads, params, strict=True)])


def pair_cosines(model_dir: Path, edits: Sequence[Case], unlearns: Sequence[Case],
                 pairs: Sequence[tuple[int, int]], budget: Budget, seed: int) -> list[float]:
    """Cosine of (edit ``i``, unlearn ``j``) gradients for each pair ``(i, j)``."""
    model, tokenizer = load_model(model_dir, device=budget.device)
    layout = describe(model, LoraSettings(rank=budget.rank, alpha=budget.alpha), KeySettings())
    inject(model, layout)
    task = MemoryTask(edits=[(c.prompt, c.target) for c in edits],
                      unlearns=[(c.prompt, c.target) for c in unlearns])
    objective = Objective(model, tokenizer, task, TrainerSettings(unlearn_loss="npo"))
    state = TrainState(init_adapter(layout, budget.rank, budget.alpha, seed), budget.device)
    params = state.parameters()
    out = []
    with use_state(state):
        g_e = [_flat(objective.edit_loss(torch.tensor([i]))[0], params)
               for i in range(len(edits))]
        g_u = [_flat(objective.unlearn_loss(torch.tensor([j]))[0], params)
               for j in range(len(unlearns))]
    for i, j in pairs:
        cos = g_e[i].dot(g_u[j]) / (g_e[i].norm() * g_u[j].norm()).clamp(min=1e-12)
        out.append(float(cos))
    return out


def conflict_histogram(model_dir: Path, in_profile: Setting, out_profile: Setting,
                       budget: Budget, seed: int = 0) -> dict[str, Any]:
    """All (edit, unlearn) pairs of each setting, split by whether the two pieces are about the
    same author. The unlearn pieces are the same in both settings."""
    result: dict[str, Any] = {"seed": seed}
    for label, setting in (("in_profile", in_profile), ("out_profile", out_profile)):
        edits, unlearns = setting.edits, setting.unlearns
        same = [(i, j) for i, e in enumerate(edits) for j, u in enumerate(unlearns)
                if e.group == u.group]
        other = [(i, j) for i, e in enumerate(edits) for j, u in enumerate(unlearns)
                 if e.group != u.group]
        pairs = same if label == "in_profile" else other
        cos = pair_cosines(model_dir, edits, unlearns, pairs, budget, seed)
        result[label] = {"cosines": [round(c, 5) for c in cos], "n": len(cos),
                         "mean": mean(cos),
                         "share_nonpositive": mean([float(c <= 0) for c in cos])}
    return result
