"""Per-row LoRA for serving: each row of a batch uses its own memory or none.

The rows that use a memory get ``x A^T B^T * scale`` from gathered per-row matrices (two batched
matmuls per module, no Python loop over requests); the others are left untouched.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from memory_store.lora.layer import LoraState
from memory_store.lora.weights import AdapterWeights


class BatchState(LoraState):
    """Per-row memories for a batch: ``adapters[i]`` is row i's adapter, or None (base).

    Continuous batching changes a batch's rows between decoding steps: ``select`` keeps some
    rows and ``concat`` appends another batch's, both by slicing or joining the gathered
    matrices (one tensor operation per module, never a rebuild from the adapters)."""

    def __init__(self, adapters: Sequence[AdapterWeights | None], dtype: torch.dtype,
                 device: torch.device | str = "cpu") -> None:
        rows = [i for i, w in enumerate(adapters) if w is not None]
        self.size = len(adapters)
        self.rows = torch.tensor(rows, dtype=torch.long, device=device)
        self.a: dict[str, torch.Tensor] = {}
        self.b: dict[str, torch.Tensor] = {}
        if not rows:
            return
        used = [adapters[i] for i in rows]
        rank = max(w.rank for w in used)
        scales = torch.tensor([w.scale for w in used], dtype=torch.float32).view(-1, 1, 1)
        for name in used[0].a:
            # smaller ranks zero-padded (adds exactly nothing); the scale folded into B
            a = torch.stack([_pad_rank(w.a[name], rank, 0) for w in used])  # (n, r, in)
            b = torch.stack([_pad_rank(w.b[name], rank, 1) for w in used]) * scales  # (n, out, r)
            # (n, in, r) and (n, r, out): ready for x @ A^T @ B^T as two bmm
            self.a[name] = a.to(device=device, dtype=dtype).transpose(1, 2).contiguous()
            self.b[name] = b.to(device=device, dtype=dtype).transpose(1, 2).contiguous()

    @classmethod
    def _of(cls, size: int, rows: torch.Tensor, a: dict[str, torch.Tensor],
            b: dict[str, torch.Tensor]) -> BatchState:
        state = cls.__new__(cls)
        state.size, state.rows, state.a, state.b = size, rows, a, b
        return state

    @property
    def empty(self) -> bool:
        return self.rows.numel() == 0

    def select(self, keep: Sequence[int]) -> BatchState:
        """The state of the batch made of rows ``keep`` (in that order) of this one."""
        slot = dict(zip(self.rows.tolist(), range(self.rows.numel()), strict=True))
        new_rows = [j for j, i in enumerate(keep) if i in slot]
        take = torch.tensor([slot[keep[j]] for j in new_rows], dtype=torch.long,
                            device=self.rows.device)
        rows = torch.tensor(new_rows, dtype=torch.long, device=self.rows.device)
        if not new_rows:
            return BatchState._of(len(keep), rows, {}, {})
        return BatchState._of(len(keep), rows,
                              {k: v.index_select(0, take) for k, v in self.a.items()},
                              {k: v.index_select(0, take) for k, v in self.b.items()})

    def concat(self, other: BatchState) -> BatchState:
        """The state of this batch's rows followed by ``other``'s."""
        rows = torch.cat([self.rows, other.rows + self.size])
        size = self.size + other.size
        if self.empty or other.empty:
            src = other if self.empty else self
            return BatchState._of(size, rows, dict(src.a), dict(src.b))
        rank = max(next(iter(s.a.values())).shape[2] for s in (self, other))
        a = {k: torch.cat([_pad_rank(s.a[k], rank, 2) for s in (self, other)])
             for k in self.a}
        b = {k: torch.cat([_pad_rank(s.b[k], rank, 1) for s in (self, other)])
             for k in self.b}
        return BatchState._of(size, rows, a, b)

    def delta(self, name: str, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        n = self.rows.numel()
        if n == 0:
            return out
        if n == self.size:  # every row has a memory: no gather, no scatter (same sums)
            return out + torch.bmm(torch.bmm(x, self.a[name]), self.b[name]).to(out.dtype)
        xs = x.index_select(0, self.rows)  # (n, T, in)
        d = torch.bmm(torch.bmm(xs, self.a[name]), self.b[name])  # (n, T, out)
        return out.index_add(0, self.rows, d.to(out.dtype))


def _pad_rank(t: torch.Tensor, rank: int, dim: int) -> torch.Tensor:
    """Zero-pad dimension ``dim`` of ``t`` (a LoRA rank axis) to ``rank``."""
    missing = rank - t.shape[dim]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t, t.new_zeros(shape)], dim=dim)
