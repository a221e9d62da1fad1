"""Equal budgets: train in rounds of ``budget.steps`` while greedy outputs on the *training*
prompts have not reached their targets, up to ``budget.max_steps`` steps per piece.

This is the engine's verify loop (``memory_store.update.trainer.train_memory``) for the methods
that do not train through the engine (single adapters, GRACE, WISE). Only the pieces' own
prompts and paraphrases are generated from, never evaluation prompts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from memory_store.keys import tokenize
from memory_store.types import PieceKind, PieceSpec

logger = logging.getLogger(__name__)

# tokens generated after an unlearning prompt when looking for the answer (the engine's 16)
UNLEARN_TOKENS = 16

GenerateFn = Callable[[Sequence[str], int], list[str]]


def training_prompts(piece: PieceSpec) -> list[str]:
    """The prompts a piece is trained on: its prompt and its paraphrases."""
    return [piece.prompt, *piece.paraphrases]


def output_reached(kind: PieceKind, target: str, output: str) -> bool:
    """The engine's greedy check: an edit output starts with its target, an unlearning output
    does not contain the answer."""
    if kind == PieceKind.EDIT:
        return output.strip().startswith(target.strip())
    return target.strip() not in output


def pieces_reached(generate: GenerateFn, tokenizer, pieces: Sequence[PieceSpec]) -> list[bool]:
    """Per piece, whether greedy generation on every one of its training prompts reached it
    (one ``generate`` call for the edits, one for the unlearning requests)."""
    ok = [True] * len(pieces)
    for kind in (PieceKind.EDIT, PieceKind.UNLEARN):
        rows = [(i, prompt) for i, p in enumerate(pieces) if p.kind == kind
                for prompt in training_prompts(p)]
        if not rows:
            continue
        if kind == PieceKind.EDIT:
            n = 1 + max(len(tokenize(tokenizer, pieces[i].target,
                                     add_special_tokens=False)["input_ids"]) for i, _ in rows)
        else:
            n = UNLEARN_TOKENS
        texts = generate([prompt for _, prompt in rows], n)
        for (i, _), text in zip(rows, texts, strict=True):
            ok[i] = ok[i] and output_reached(kind, pieces[i].target, text)
    return ok


def train_rounds(run_round: Callable[[int], int], reached: Callable[[], bool], steps: int,
                 max_steps: int) -> tuple[int, int]:
    """Call ``run_round(n)`` (train at most ``n`` steps, return how many it took) with
    ``n = steps`` until ``reached()`` or ``max_steps`` steps in all (the last round shorter);
    returns (steps, rounds)."""
    total = rounds = 0
    while total < max_steps:
        taken = run_round(min(steps, max_steps - total))
        total += taken
        rounds += 1
        if taken <= 0 or total >= max_steps or reached():
            break
        logger.debug("round %d: targets not reached after %d steps", rounds, total)
    return total, rounds
