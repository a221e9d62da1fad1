"""Skipping the frozen blocks below the LoRA band while a memory trains.

Memories only adapt blocks ``start = min(layout.lora_layers)`` and above, so the input of block
``start`` never changes while a memory trains on a fixed batch: it is computed once
(``prefix_hidden``) and every later forward of that batch skips blocks ``0 .. start-1`` (each
returns its input; the last returns the cached hidden state). The embeddings, attention mask and
position embeddings are still computed by the model as usual, so the blocks above see exactly
what a full forward gives them. The skip is thread-local: serving threads are never affected.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch
from torch import nn

from memory_store.models.access import ModelLayout, get_module

_local = threading.local()


class _Captured(Exception):
    pass


def prefix_start(layout: ModelLayout) -> int:
    """Index of the first block a memory adapts (0: nothing to skip)."""
    return min(layout.lora_layers) if layout.targets else 0


def _hidden_arg(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def install(model: nn.Module, layout: ModelLayout) -> int:
    """Make blocks below the LoRA band skippable (idempotent); returns the first adapted block."""
    start = prefix_start(layout)
    blocks = get_module(model, layout.blocks_path)
    for i in range(start):
        block = blocks[i]
        if getattr(block, "_loka_prefix_skip", False):
            continue
        original = block.forward
        last = i == start - 1

        def forward(*args, _original=original, _last=last, **kwargs):
            mode = getattr(_local, "mode", None)
            if mode is None:
                return _original(*args, **kwargs)
            if mode == "capture":
                out = _original(*args, **kwargs)
                if _last:
                    _local.tuple_out = isinstance(out, tuple)
                    _local.captured = out[0] if isinstance(out, tuple) else out
                    raise _Captured
                return out
            hidden = _local.hidden if _last else _hidden_arg(args, kwargs)
            return (hidden,) if getattr(_local, "tuple_out", False) else hidden

        block.forward = forward
        block._loka_prefix_skip = True
    return start


@contextlib.contextmanager
def _mode(mode: str | None, hidden: torch.Tensor | None = None) -> Iterator[None]:
    previous = getattr(_local, "mode", None), getattr(_local, "hidden", None)
    _local.mode, _local.hidden = mode, hidden
    try:
        yield
    finally:
        _local.mode, _local.hidden = previous


@torch.no_grad()
def prefix_hidden(model: nn.Module, layout: ModelLayout, input_ids: torch.Tensor,
                  attention_mask: torch.Tensor) -> torch.Tensor | None:
    """The input of the first adapted block for this batch (None when nothing is skippable).
    Must run without any adapter active."""
    if install(model, layout) == 0:
        return None
    _local.captured = None
    with _mode("capture"), contextlib.suppress(_Captured):
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return _local.captured


@contextlib.contextmanager
def skipping(hidden: torch.Tensor | None) -> Iterator[None]:
    """Forwards of this thread inside the block reuse ``hidden`` for the skipped blocks."""
    if hidden is None:
        yield
        return
    with _mode("skip", hidden):
        yield
