"""One hooked layer of the base model, for the methods that edit a single layer (GRACE, WISE).

The edited layer is the MLP down projection (the block's FFN output) of block
``(2 * (n_layers - 1)) // 3``, two thirds of the way up, where GRACE and WISE edit (GRACE:
a late-middle MLP layer of T5/GPT; WISE: an FFN value matrix of a late-middle block).

A :class:`LayerHook` calls its :class:`HookedServed` (``decide``, ``apply``) on that layer's
forward pass. Within
``hook.serving(rows)`` the first forward (the prefill, or the one teacher-forced pass) lets the
editor decide per row from the layer's input (its key / activation), and every forward may
rewrite the layer's output. :class:`HookedServed` serves such a model (greedy generation, scores,
teacher-forced predictions) with each prompt's rows set up as serving does.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.methods.base import Budget, UpdateStats
from benchmarks.methods.predict import teacher_forced_argmax
from memory_store.keys import encode_batch
from memory_store.models.access import ARCHITECTURES, get_module, load_model
from memory_store.types import PieceKind
from memory_store.update import losses
from memory_store.update.trainer import UNLEARN_MARGIN

logger = logging.getLogger(__name__)

Pair = tuple[str, str]


def edit_layer(n_layers: int) -> int:
    """The block whose FFN output GRACE and WISE edit: two thirds of the way up."""
    return (2 * (n_layers - 1)) // 3


def down_projection(model: nn.Module, layer: int | None = None) -> tuple[str, nn.Module]:
    """(dotted name, module) of the MLP down projection of block ``layer`` (default
    :func:`edit_layer`): the last MLP projection of :data:`ARCHITECTURES`."""
    cfg = model.config
    text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    n_layers = int(text_cfg.num_hidden_layers)
    layer = edit_layer(n_layers) if layer is None else layer
    if cfg.model_type not in ARCHITECTURES or "*" in ARCHITECTURES[cfg.model_type][1][-1]:
        raise ValueError(f"no single MLP down projection known for {cfg.model_type!r}")
    blocks_path, suffixes = ARCHITECTURES[cfg.model_type]
    name = f"{blocks_path}.{layer}.{suffixes[-1]}"
    return name, get_module(model, name)


@dataclass
class Rows:
    """Where each row's prompt lies in the first forward pass of a hooked call."""

    prompt_mask: torch.Tensor  # (B, T0) bool: the prompt's own tokens
    last: torch.Tensor  # (B,) position of each prompt's last token


class LayerHook:
    """A forward hook on one module that defers to an editor inside :meth:`serving`."""

    def __init__(self, module: nn.Module, editor: HookedServed) -> None:
        self.editor = editor
        self._rows: Rows | None = None
        self._decision: Any = None
        self._seen = 0
        self.handle = module.register_forward_hook(self._hook)

    @contextmanager
    def serving(self, rows: Rows, decision: Any = None) -> Iterator[None]:
        """Hooked forwards for ``rows``; ``decision`` given: used as is (training)."""
        self._rows, self._decision, self._seen = rows, decision, 0
        try:
            yield
        finally:
            self._rows, self._decision, self._seen = None, None, 0

    def _hook(self, module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor | None:
        if self._rows is None:
            return None
        x = args[0]
        if self._decision is None:
            self._decision = self.editor.decide(x, self._rows)
        n = x.shape[1]
        pos = torch.arange(self._seen, self._seen + n, device=x.device)
        self._seen += n
        return self.editor.apply(x, out, self._decision, pos[None, :] >= self._rows.last[:, None])

    def remove(self) -> None:
        self.handle.remove()


NPO_BETA = 0.1  # GRACE and WISE have no unlearning: their values / side memory take NPO


def piece_loss(kind: PieceKind, logits: torch.Tensor, batch: losses.TokenBatch,
               ref: torch.Tensor | None) -> tuple[torch.Tensor, bool]:
    """One piece kind's training loss on a batch and whether its targets are met, by the
    engine's rule: edits reproduce every target token teacher-forced; unlearning drops the
    answer's log-probability by ``UNLEARN_MARGIN`` below the base's (``ref``) with its first
    token no longer the argmax."""
    if kind == PieceKind.EDIT:
        done = bool((losses.target_accuracy(logits, batch.labels) >= 1.0).all())
        return losses.nll(logits, batch.labels), done
    drop = losses.sequence_logprob(logits, batch.labels) - ref
    done = bool((~losses.first_token_hit(logits, batch.labels)).all()
                and (drop <= -UNLEARN_MARGIN).all())
    return losses.npo(logits, batch.labels, ref, NPO_BETA), done


def optimise(opt: torch.optim.Optimizer, loss_and_done: Callable[[], tuple[torch.Tensor, bool]],
             n: int, budget: Budget) -> int:
    """Up to ``n`` steps, the engine's loop: ``done`` is judged on the step's own forward pass
    and stops the round (with ``budget.early_stop``) on a check step. Returns steps taken."""
    for step in range(1, n + 1):
        opt.zero_grad(set_to_none=True)
        loss, done = loss_and_done()
        loss.backward()
        opt.step()
        if budget.early_stop and done and step % budget.check_every == 0:
            return step
    return n


def teacher_forced_rows(batch: losses.TokenBatch) -> Rows:
    """Rows of right-padded prompt+target sequences (:func:`losses.tokenize_pairs`)."""
    is_target = batch.labels != -100
    has_target = is_target.any(-1)
    first_target = is_target.float().argmax(-1)
    length = batch.attention_mask.sum(-1)
    prompt_len = torch.where(has_target, first_target, length)
    pos = torch.arange(batch.input_ids.shape[1], device=batch.input_ids.device)
    return Rows(pos[None, :] < prompt_len[:, None], prompt_len - 1)


class HookedServed(ABC):
    """The base model with one hooked layer; subclasses are the editors (``decide`` which
    rows use the edited layer, ``apply`` the edit to that layer's output)."""

    def __init__(self, name: str, model_dir: Path, budget: Budget, seed: int) -> None:
        self.name = name
        self.budget = budget
        self.seed = seed
        self.model, self.tokenizer = load_model(model_dir, device=budget.device)
        self.layer_name, self.module = down_projection(self.model)
        self.hook = LayerHook(self.module, self)
        self.last_update = UpdateStats(0.0, 0)

    # ---------------------------------------------------------------- the editor
    @abstractmethod
    def decide(self, x: torch.Tensor, rows: Rows) -> Any:
        """Per-row decision from the layer input ``x`` (B, T0, d_in) of the first forward."""

    @abstractmethod
    def apply(self, x: torch.Tensor, out: torch.Tensor, decision: Any,
              after: torch.Tensor) -> torch.Tensor:
        """The layer's output; ``after`` (B, T) marks positions at or after the prompt's
        last token."""

    # ---------------------------------------------------------------- serving
    @torch.no_grad()
    def generate(self, prompts: Sequence[str], max_new_tokens: int,
                 batch_size: int = 32) -> list[str]:
        """Greedy continuations (EOS ends a row, as the engine's generator)."""
        out: list[str] = []
        for start in range(0, len(prompts), batch_size):
            out += self._generate(list(prompts[start:start + batch_size]), max_new_tokens)
        return out

    def _generate(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        enc = encode_batch(self.model, self.tokenizer, prompts)
        mask = enc["attention_mask"]
        width = mask.shape[1]
        rows = Rows(mask.bool(), torch.full((len(prompts),), width - 1, device=mask.device))
        eos = self.tokenizer.eos_token_id
        tokens: list[list[int]] = [[] for _ in prompts]
        done = [False] * len(prompts)
        with self.hook.serving(rows):
            res = self.model(**enc, use_cache=True)
            pos = enc["position_ids"][:, -1:]
            for step in range(max_new_tokens):
                nxt = res.logits[:, -1, :].argmax(-1)
                for i, t in enumerate(nxt.tolist()):
                    if not done[i]:
                        done[i] = t == eos
                        if not done[i]:
                            tokens[i].append(t)
                if all(done) or step == max_new_tokens - 1:
                    break
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)
                pos = pos + 1
                res = self.model(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos,
                                 past_key_values=res.past_key_values, use_cache=True)
        return [self.tokenizer.decode(t, skip_special_tokens=True) for t in tokens]

    @torch.no_grad()
    def score(self, pairs: Sequence[Pair], batch_size: int = 32) -> list[tuple[float, float]]:
        out: list[tuple[float, float]] = []
        for start in range(0, len(pairs), batch_size):
            batch = losses.tokenize_pairs(self.tokenizer, list(pairs[start:start + batch_size]),
                                          self.model.device)
            with self.hook.serving(teacher_forced_rows(batch)):
                logits = losses.forward_logits(self.model, batch)
            lp = losses.sequence_logprob(logits, batch.labels)
            acc = losses.target_accuracy(logits, batch.labels)
            out += [(float(a), float(b)) for a, b in zip(lp, acc, strict=True)]
        return out

    def predictions(self, pairs: Sequence[Pair]) -> list[list[int]]:
        def hooked(chunk: list[Pair]):
            batch = losses.tokenize_pairs(self.tokenizer, chunk, self.model.device)
            return self.hook.serving(teacher_forced_rows(batch))
        return teacher_forced_argmax(self.model, self.tokenizer, pairs, hooked)

    def close(self) -> None:
        self.hook.remove()
