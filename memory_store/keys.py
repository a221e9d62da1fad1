"""Keys: what a prompt is about, read from the frozen model's hidden states.

A key is the pooled hidden state at the input of block ``layout.key_layer``, minus a centre
(the mean over a calibration set, stored with the codebook; hidden states share a large common
direction that would make every cosine close to 1), L2-normalised. Computing a key runs only the
blocks below the key layer: a pre-hook stops the forward there.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from memory_store.models.access import ModelLayout, fingerprint, get_module


class _Stop(Exception):
    pass


_TOKENIZER_LOCK = threading.Lock()
_hook_local = threading.local()


def tokenize(tokenizer, *args, **kwargs):
    """Call a (fast) tokenizer under a process-wide lock: its Rust backend mutates padding
    state on every call and raises "Already borrowed" when two threads meet there."""
    with _TOKENIZER_LOCK:
        return tokenizer(*args, **kwargs)


def _key_block_hook(_module, args, kwargs):
    handler = getattr(_hook_local, "handler", None)
    if handler is not None:
        handler(_block_input(args, kwargs))


def install_key_hook(block: nn.Module) -> None:
    """Install (once) the pre-hook through which key computation and in-prefill routing read
    the key layer's input. It does nothing unless *this thread* registered a handler, so
    forwards in other threads (training, other requests) never see it."""
    if not getattr(block, "_loka_key_hook", False):
        block.register_forward_pre_hook(_key_block_hook, with_kwargs=True)
        block._loka_key_hook = True


@contextlib.contextmanager
def on_key_layer(handler: Callable[[torch.Tensor], None]) -> Iterator[None]:
    """Call ``handler(hidden)`` with the key block's input during forwards of this thread."""
    previous = getattr(_hook_local, "handler", None)
    _hook_local.handler = handler
    try:
        yield
    finally:
        _hook_local.handler = previous


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """(B, T, d) hidden states, (B, T) mask -> (B, d) pooled vectors."""
    mask = mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    if pooling == "last":
        # left padding: the last real token is the last position
        return hidden[:, -1, :].float()
    return ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).float()


def normalise(raw: torch.Tensor, centre: torch.Tensor | None) -> torch.Tensor:
    if centre is not None:
        raw = raw - centre.to(raw)
    return torch.nn.functional.normalize(raw, dim=-1)


def _block_input(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def encode_batch(model: nn.Module, tokenizer, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
    """Tokenise with left padding and matching position ids (as generation does)."""
    enc = tokenize(tokenizer, list(prompts), return_tensors="pt", padding=True,
                   padding_side="left")
    mask = enc["attention_mask"]
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    device = next(model.parameters()).device
    return {
        "input_ids": enc["input_ids"].to(device),
        "attention_mask": mask.to(device),
        "position_ids": pos.to(device),
    }


@torch.no_grad()
def raw_keys(model: nn.Module, tokenizer, layout: ModelLayout, prompts: Sequence[str],
             pooling: str = "mean", batch_size: int = 64) -> torch.Tensor:
    """(N, d) pooled hidden states at the key layer, before centring."""
    install_key_hook(get_module(model, layout.blocks_path)[layout.key_layer])
    # batches of similar lengths pad little (chat-template prompts are several times longer
    # than completion prompts); the keys come back in the callers' order
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    prompts = [prompts[i] for i in order]
    out = []
    for start in range(0, len(prompts), batch_size):
        batch = encode_batch(model, tokenizer, prompts[start : start + batch_size])
        captured: list[torch.Tensor] = []

        def stop_here(hidden: torch.Tensor, captured=captured) -> None:
            captured.append(hidden)
            raise _Stop  # the blocks above the key layer are not needed

        with on_key_layer(stop_here), contextlib.suppress(_Stop):
            model(**batch, use_cache=False)
        out.append(pool(captured[0], batch["attention_mask"], pooling).cpu())
    if not out:
        return torch.zeros(0, layout.hidden_size)
    keys = torch.cat(out)
    return keys[torch.argsort(torch.tensor(order))]


def compute_keys(model: nn.Module, tokenizer, layout: ModelLayout, prompts: Sequence[str],
                 centre: torch.Tensor | None, pooling: str = "mean") -> np.ndarray:
    """(N, d) float32 unit keys."""
    raw = raw_keys(model, tokenizer, layout, prompts, pooling)
    return normalise(raw, centre).numpy().astype(np.float32)


# Generic prompts used to centre keys when a store is created (any model, any domain).
CALIBRATION_PROMPTS: tuple[str, ...] = (
    "The weather today is", "My favourite food is", "The number after five is",
    "Once upon a time there was", "The best way to learn is", "In the morning I usually",
    "The capital of the country is", "She opened the door and", "Water boils at",
    "The book on the table is", "Q: What is the colour of the sky?\nA:", "The meeting starts at",
    "He was born in the city of", "The company was founded by", "Their native language is",
    "The river flows into the", "A good breakfast includes", "The train leaves from",
    "Q: Who wrote the letter?\nA:", "The main ingredient of bread is", "The children played in",
    "The price of the ticket is", "The song was written by", "The team plays in",
    "The museum is located in", "Q: Where does the author live?\nA:", "The film was directed by",
    "The currency used there is", "The mountain is known for", "The recipe calls for",
    "The sport they love is", "Q: What is the profession of the man?\nA:",
)


class KeyEncoder:
    """Unit keys on the frozen model: the pooled hidden state at the key layer, minus the
    store's key centre, normalised. One per engine; thread-safe (reads only)."""

    def __init__(self, model: nn.Module, tokenizer, layout: ModelLayout, pooling: str,
                 centre: torch.Tensor) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.layout = layout
        self.pooling = pooling
        self.centre = centre

    def keys(self, prompts: Sequence[str]) -> np.ndarray:
        """(N, d) float32 unit keys of ``prompts``."""
        return compute_keys(self.model, self.tokenizer, self.layout, list(prompts), self.centre,
                            self.pooling)

    def identity(self) -> str:
        """What the keys depend on: the model's weights (its fingerprint), the key layer and
        pooling, and the key centre. Equal identities give equal keys."""
        centre = hashlib.sha256(self.centre.float().numpy().tobytes()).hexdigest()
        return (f"{fingerprint(self.model)}|{self.layout.key_layer}|{self.pooling}|"
                f"{centre}")

    def unit(self, raw: torch.Tensor) -> np.ndarray:
        """(N, d) raw pooled keys (as the routing hook sees them) -> (N, d) unit keys."""
        return normalise(raw.float().cpu(), self.centre).numpy()


def key_centre(model: nn.Module, tokenizer, layout: ModelLayout, pooling: str) -> torch.Tensor:
    """(d,) mean raw key of ``CALIBRATION_PROMPTS``: computed once, when a store is created."""
    return raw_keys(model, tokenizer, layout, CALIBRATION_PROMPTS, pooling).mean(0)
