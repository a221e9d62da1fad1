"""One memory's LoRA weights and their storage as standard PEFT folders
(``adapter_config.json`` + ``adapter_model.safetensors``, loadable by
``peft.PeftModel.from_pretrained``), written atomically and named by a content hash.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from memory_store.files import fsync_dir, fsync_file, save_safetensors
from memory_store.models.access import ModelLayout, TargetModule


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
                 directory: Path, durable: bool = True) -> None:
    """Write a PEFT adapter folder atomically: a temp folder, then rename. ``durable`` also
    fsyncs the files and the parent folder (a published memory must survive a crash; a
    synthetic one written by the thousand for a benchmark need not)."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.parent / f".tmp-{directory.name}-{os.getpid()}-{threading.get_ident()}"
    tmp.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name in weights.a:
        tensors[f"base_model.model.{name}.lora_A.weight"] = weights.a[name].contiguous()
        tensors[f"base_model.model.{name}.lora_B.weight"] = weights.b[name].contiguous()
    save_safetensors(tensors, tmp / "adapter_model.safetensors")
    config = peft_config(layout, weights.rank, weights.alpha, base_model)
    (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2))
    if durable:
        for f in tmp.iterdir():
            fsync_file(f)
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
    if durable:
        fsync_dir(directory.parent)


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
    """16 hex digits over the rank, alpha and every matrix: names a memory's content."""
    h = hashlib.sha256(f"{weights.rank}:{weights.alpha}".encode())
    for name in sorted(weights.a):
        h.update(name.encode())
        h.update(weights.a[name].contiguous().numpy().tobytes())
        h.update(weights.b[name].contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
