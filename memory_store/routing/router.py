"""Routing one codebook version: nearest stored key (the index), then the gate's verdict.

``Router.route(keys)`` answers, for each key, the memory to serve it (``Route.memory_id``) or
None for the base model, with the gate probability and the similarity it was decided on.
"""

from __future__ import annotations

import numpy as np
import torch

from memory_store.config import RouterSettings
from memory_store.routing.gate import Gate
from memory_store.routing.index import KeyIndex
from memory_store.types import Route


class Router:
    """Index + gate of one published version; immutable, safe to share between threads."""

    def __init__(self, index: KeyIndex, gate: Gate | None, settings: RouterSettings) -> None:
        self.index = index
        self.gate = gate
        self.settings = settings

    def route(self, keys: np.ndarray) -> list[Route]:
        """(N, d) unit keys -> one ``Route`` each (``memory_id`` None: the base model)."""
        if len(self.index) == 0:
            return [Route(None, 0.0, None) for _ in keys]
        sims, names = self.index.search(keys, 1)
        best = sims[:, 0]  # (N,)
        if self.gate is not None:
            with torch.no_grad():
                gates = self.gate(torch.from_numpy(keys), torch.from_numpy(best)).numpy()
        else:
            gates = np.ones(len(keys), dtype=np.float32)
        s = self.settings
        routes = []
        for g, sim, name in zip(gates, best, names, strict=True):
            chosen = name[0] if g >= s.threshold and sim >= s.min_similarity else None
            routes.append(Route(chosen, float(g), float(sim)))
        return routes
