"""LoRA memories applied per request: the wrapper layer and the thread-local state it reads.

The target modules of the frozen model are wrapped once by ``LoraLinear``. What a wrapper adds
is decided by the *thread-local* ``LoraState`` active around a forward:

- none active: the base module's output, bit for bit;
- ``TrainState``: one trainable adapter for every row (training and gradient probes);
- ``memory_store.serving.lora.BatchState``: a mixed batch in which each row uses its own memory
  or none.

Because the state is thread-local, a training thread and serving threads share one model.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch
from torch import nn

from memory_store.lora.weights import AdapterWeights
from memory_store.models.access import ModelLayout, get_module

_local = threading.local()


def _active() -> LoraState | None:
    return getattr(_local, "state", None)


@contextlib.contextmanager
def use_state(state: LoraState | None) -> Iterator[None]:
    """Activate ``state`` for forwards run by this thread inside the block."""
    previous = _active()
    _local.state = state
    try:
        yield
    finally:
        _local.state = previous


class LoraState:
    def delta(self, name: str, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class LoraLinear(nn.Module):
    """Wraps a frozen linear (or GPT-2 Conv1D) layer; adds the active state's LoRA delta."""

    def __init__(self, base: nn.Module, name: str) -> None:
        super().__init__()
        self.base = base
        self.lora_name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        state = _active()
        if state is None:
            return out
        return state.delta(self.lora_name, x, out)


def inject(model: nn.Module, layout: ModelLayout) -> None:
    """Wrap every LoRA target of ``model`` (idempotent)."""
    for target in layout.targets:
        parent_name, _, child = target.name.rpartition(".")
        parent = get_module(model, parent_name)
        module = getattr(parent, child)
        if not isinstance(module, LoraLinear):
            setattr(parent, child, LoraLinear(module, target.name))


class TrainState(LoraState):
    """A single trainable adapter applied to every row."""

    def __init__(self, weights: AdapterWeights, device: torch.device | str = "cpu") -> None:
        self.scale = weights.scale
        self.a = {k: nn.Parameter(v.clone().to(device)) for k, v in weights.a.items()}
        self.b = {k: nn.Parameter(v.clone().to(device)) for k, v in weights.b.items()}

    def parameters(self) -> list[nn.Parameter]:
        return [p for k in sorted(self.a) for p in (self.a[k], self.b[k])]

    def delta(self, name: str, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        a, b = self.a[name], self.b[name]
        return out + (x.to(a.dtype) @ a.T @ b.T * self.scale).to(out.dtype)  # (B, T, out)

    def export(self, rank: int, alpha: float) -> AdapterWeights:
        return AdapterWeights(
            rank, alpha,
            {k: v.detach().cpu().clone() for k, v in self.a.items()},
            {k: v.detach().cpu().clone() for k, v in self.b.items()},
        )


