"""LoRA memories applied per request.

The target modules of the frozen model are wrapped once by ``LoraLinear``. What a wrapper adds
is decided by the *thread-local* ``LoraState`` active around a forward:

- none active: the base module's output, bit for bit;
- ``TrainState``: one trainable adapter for every row (training and gradient probes);
- ``BatchState``: a mixed batch in which each row uses its own memory or none; the rows that use
  a memory get ``x A^T B^T * scale`` from gathered per-row matrices (two batched matmuls per
  module, no Python loop over requests), the others are left untouched.

Because the state is thread-local, a training thread and serving threads share one model.
Adapters are saved as standard PEFT folders (``adapter_config.json`` +
``adapter_model.safetensors``), loadable by ``peft.PeftModel.from_pretrained``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from memory_store.model_access import ModelLayout, TargetModule, _get

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
        parent = _get(model, parent_name)
        module = getattr(parent, child)
        if not isinstance(module, LoraLinear):
            setattr(parent, child, LoraLinear(module, target.name))


@dataclass
class AdapterWeights:
    """One memory's LoRA matrices: A (r, in) and B (out, r) per target module name."""

    rank: int
    alpha: float
    a: dict[str, torch.Tensor]
    b: dict[str, torch.Tensor]

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.a.values(), *self.b.values()))


def init_adapter(layout: ModelLayout, rank: int, alpha: float, seed: int) -> AdapterWeights:
    """PEFT's default init: A Kaiming-uniform, B zero (the memory starts as the identity)."""
    gen = torch.Generator().manual_seed(seed)
    a, b = {}, {}
    for t in layout.targets:
        bound = 1.0 / math.sqrt(t.in_features)  # kaiming_uniform_(a=sqrt(5)) as in nn.Linear
        a[t.name] = (torch.rand(rank, t.in_features, generator=gen) * 2 - 1) * bound
        b[t.name] = torch.zeros(t.out_features, rank)
    return AdapterWeights(rank, alpha, a, b)


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


# ---------------------------------------------------------------- PEFT-format persistence

def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def peft_config(layout: ModelLayout, rank: int, alpha: float, base_model: str) -> dict:
    targets: Sequence[TargetModule] = layout.targets
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": rank,
        "lora_alpha": alpha,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": any(t.fan_in_fan_out for t in targets),
        "target_modules": sorted(t.name for t in targets),
        "inference_mode": True,
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
    }


def save_adapter(weights: AdapterWeights, layout: ModelLayout, base_model: str,
                 directory: Path) -> None:
    """Write a PEFT adapter folder atomically: a temp folder, fsync, then rename."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.parent / f".tmp-{directory.name}-{os.getpid()}-{threading.get_ident()}"
    tmp.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name in weights.a:
        tensors[f"base_model.model.{name}.lora_A.weight"] = weights.a[name].contiguous()
        tensors[f"base_model.model.{name}.lora_B.weight"] = weights.b[name].contiguous()
    save_file(tensors, str(tmp / "adapter_model.safetensors"))
    config = peft_config(layout, weights.rank, weights.alpha, base_model)
    (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2))
    for f in tmp.iterdir():
        with open(f, "rb+") as fh:
            os.fsync(fh.fileno())
    if directory.exists():  # same content hash: already written by an earlier attempt
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()
        return
    try:
        os.rename(tmp, directory)
    except OSError:
        if not directory.exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # another writer renamed the same content first
        return
    _fsync_dir(directory.parent)


def load_adapter(directory: Path) -> AdapterWeights:
    config = json.loads((directory / "adapter_config.json").read_text())
    tensors = load_file(str(directory / "adapter_model.safetensors"))
    a, b = {}, {}
    for key, value in tensors.items():
        name = key.removeprefix("base_model.model.")
        if name.endswith(".lora_A.weight"):
            a[name.removesuffix(".lora_A.weight")] = value
        elif name.endswith(".lora_B.weight"):
            b[name.removesuffix(".lora_B.weight")] = value
    return AdapterWeights(int(config["r"]), float(config["lora_alpha"]), a, b)


def adapter_hash(weights: AdapterWeights) -> str:
    import hashlib

    h = hashlib.sha256(f"{weights.rank}:{weights.alpha}".encode())
    for name in sorted(weights.a):
        h.update(name.encode())
        h.update(weights.a[name].contiguous().numpy().tobytes())
        h.update(weights.b[name].contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
