"""The learned gate: P(a query concerns stored knowledge), from its key and its best similarity
to the codebook. Retrained from scratch after every update (a few hundred full-batch steps on a
few thousand keys: well under a second on CPU for small codebooks)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from memory_store.config import RouterSettings
from memory_store.files import fsync_dir, save_safetensors, write_atomically


class Gate(nn.Module):
    """logit = MLP(key) + softplus(w) * SIM_SCALE * similarity: free in the key, monotone
    increasing in the similarity, so a query closer to stored knowledge than any training
    positive (the stored prompt itself, at similarity 1) is never rejected for being close."""

    SIM_SCALE = 10.0

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, 1))
        self.sim_weight = nn.Parameter(torch.tensor(0.5))

    def logits(self, keys: torch.Tensor, sims: torch.Tensor) -> torch.Tensor:
        slope = nn.functional.softplus(self.sim_weight) * self.SIM_SCALE
        return self.net(keys).squeeze(-1) + slope * sims  # (N,)

    def forward(self, keys: torch.Tensor, sims: torch.Tensor) -> torch.Tensor:
        """(N, d) keys, (N,) best similarities -> (N,) probabilities."""
        return torch.sigmoid(self.logits(keys, sims))


def train_gate(pos_keys: np.ndarray, pos_sims: np.ndarray, neg_keys: np.ndarray,
               neg_sims: np.ndarray, settings: RouterSettings) -> Gate:
    """Class-balanced logistic training of the gate; deterministic under ``settings.seed``."""
    torch.manual_seed(settings.seed)
    dim = pos_keys.shape[1]
    gate = Gate(dim, settings.hidden)
    x = torch.from_numpy(np.concatenate([pos_keys, neg_keys]).astype(np.float32))
    s = torch.from_numpy(np.concatenate([pos_sims, neg_sims]).astype(np.float32))
    y = torch.cat([torch.ones(len(pos_keys)), torch.zeros(len(neg_keys))])
    w = torch.where(y > 0, 0.5 / max(len(pos_keys), 1), 0.5 / max(len(neg_keys), 1))
    opt = torch.optim.Adam(gate.parameters(), lr=settings.learning_rate)
    for _ in range(settings.epochs):
        opt.zero_grad()
        logits = gate.logits(x, s)
        loss = (nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")
                * w).sum()
        loss.backward()
        opt.step()
    gate.eval()
    gate.requires_grad_(False)
    return gate


def save_gate(gate: Gate, path: Path) -> None:
    tensors = {k: v.contiguous() for k, v in gate.state_dict().items()}
    write_atomically(path, lambda tmp: save_safetensors(tensors, tmp))
    fsync_dir(path.parent)  # the rename survives a power cut


def load_gate(path: Path, dim: int, hidden: int) -> Gate:
    gate = Gate(dim, hidden)
    gate.load_state_dict(load_file(str(path)))
    gate.eval()
    gate.requires_grad_(False)
    return gate
