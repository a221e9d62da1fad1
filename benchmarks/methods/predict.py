"""Teacher-forced argmax predictions, shared by every served method (``Served.predictions``).

EasyEdit's locality runs the model on ``prompt + answer`` and keeps the argmax token at each
position that predicts an answer token; locality is then the share of those positions where
the edited model's argmax equals the unedited model's. A method whose forward pass is the
frozen model plus per-row state (LoRA adapters, hooks) implements ``predictions`` as
``teacher_forced_argmax(model, tokenizer, pairs, context)`` with ``context(chunk)`` putting
that state in place; a method that computes logits its own way can use :func:`target_argmax`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext

import torch

from memory_store.update import losses

Pair = tuple[str, str]


def target_argmax(logits: torch.Tensor, labels: torch.Tensor) -> list[list[int]]:
    """Per row, the argmax token at every position that predicts a target token, in order
    (``labels`` -100 outside the target, as :func:`losses.tokenize_pairs` builds them)."""
    pred = logits[:, :-1].argmax(-1)
    mask = labels[:, 1:] != -100
    return [row[m].tolist() for row, m in zip(pred, mask, strict=True)]


@torch.no_grad()
def teacher_forced_argmax(model, tokenizer, pairs: Sequence[Pair],
                          context: Callable[[list[Pair]], AbstractContextManager] | None = None,
                          batch_size: int = 32) -> list[list[int]]:
    """Argmax tokens at the answer positions of each (prompt, answer), teacher forced, one list
    per pair with one token per answer token. The pairs are tokenised as the scores are
    (:func:`losses.tokenize_pairs`); ``context(chunk)`` is entered around each chunk's forward
    pass (None: the model as it is)."""
    out: list[list[int]] = []
    for start in range(0, len(pairs), batch_size):
        chunk = list(pairs[start:start + batch_size])
        batch = losses.tokenize_pairs(tokenizer, chunk, model.device)
        with context(chunk) if context is not None else nullcontext():
            logits = losses.forward_logits(model, batch)
        out += target_argmax(logits, batch.labels)
    return out
