"""Batched generation in which every row may use a different memory (or none).

One prefill over the left-padded batch, then token-by-token decoding with the KV cache. Rows that
route automatically are routed *inside* the prefill: a pre-hook on the key-layer block pools the
hidden states it receives (the same numbers a standalone key computation reads), asks the router,
and installs the per-row adapters before any LoRA layer runs, so routing costs no second pass.
(When LoRA layers sit below the key layer, keys are computed in a short separate pass first.)

Rows leave the batch as soon as they finish (their KV cache rows are dropped), and
``RunningBatch`` lets new rows join between decoding steps (continuous batching): their prefill
runs on its own, then their cache is left-padded to the running one's length and appended.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicCache, DynamicLayer

from memory_store.keys import encode_batch, install_key_hook, on_key_layer, pool, raw_keys
from memory_store.lora.layer import LoraState, use_state
from memory_store.lora.weights import AdapterWeights
from memory_store.models.access import ModelLayout, get_module
from memory_store.serving.lora import BatchState
from memory_store.types import Route

logger = logging.getLogger(__name__)

MIN_TEMPERATURE = 1e-5

# (n, d) raw pooled keys of the auto rows -> their routes and adapters
RouterFn = Callable[[torch.Tensor], list[tuple[Route, AdapterWeights | None]]]


@dataclass
class RowPlan:
    prompt: str
    max_new_tokens: int = 32
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    auto: bool = True  # route through the gate
    adapter: AdapterWeights | None = None  # used when auto is False
    route: Route | None = None  # filled for fixed rows by the caller
    ignore_eos: bool = False  # as vLLM's: EOS does not end the row (max_new_tokens does)
    min_tokens: int = 0  # as vLLM's: no EOS and no stop string before this many tokens
    stream: bool = False  # keep the row's text current after every token


@dataclass
class RowOutput:
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str = "length"
    route: Route | None = None
    prompt_tokens: int = 0
    done: bool = False
    stop_from: int = 0  # stop strings are searched from here (text before min_tokens is exempt)


@dataclass
class GenerationStats:
    """Cumulative counters of a ``BatchGenerator``; read the difference around a workload."""

    prefills: int = 0  # prefill forwards (each routes its own rows)
    rows: int = 0  # rows prefilled
    prefill_s: float = 0.0  # prefill forwards, routing included
    route_s: float = 0.0  # routing inside prefills: pooling, gate, search, adapters
    decode_steps: int = 0  # decoding forwards
    decode_rows: int = 0  # rows summed over decoding forwards
    decode_s: float = 0.0
    tokens: int = 0  # tokens picked

    def copy(self) -> GenerationStats:
        return GenerationStats(**self.__dict__)


class _Deferred(LoraState):
    """A state whose per-row adapters are decided mid-forward by the routing hook."""

    def __init__(self) -> None:
        self.inner: BatchState | None = None

    def delta(self, name: str, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return out if self.inner is None else self.inner.delta(name, x, out)


def _pick(logits: torch.Tensor, plan: RowPlan, gen: torch.Generator | None) -> int:
    """Next token for one row: greedy at temperature 0, else nucleus sampling."""
    if plan.temperature < MIN_TEMPERATURE:  # as vLLM: tiny temperatures are greedy
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / plan.temperature, -1)
    if plan.top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < plan.top_p
        keep[0] = True
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
        probs = probs / probs.sum()
    return int(torch.multinomial(probs, 1, generator=gen))


def _mergeable(cache: Any) -> bool:
    """True for a cache whose layers are plain growing tensors (no sliding window, no static
    buffers), which rows can leave and join by slicing and padding."""
    return isinstance(cache, DynamicCache) and all(
        type(layer) is DynamicLayer and layer.is_initialized for layer in cache.layers)


@dataclass
class _Rows:
    """Rows decoding together: their plans and outputs, per-row LoRA state, KV cache, attention
    mask (B, L), positions of their last token (B, 1) and next-token logits (B, V)."""

    plans: list[RowPlan]
    outs: list[RowOutput]
    gens: list[torch.Generator | None]
    tags: list[Any]
    state: BatchState
    past: Any
    mask: torch.Tensor
    pos: torch.Tensor
    logits: torch.Tensor
    eager_text: bool  # keep every row's text current after each token (streaming)
    next_ids: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.plans)

    def keep(self, idx: list[int]) -> None:
        """Keep rows ``idx`` (in that order); drop cache columns no kept row attends to."""
        if len(idx) == len(self.plans):
            return
        if not idx:
            self.plans, self.outs, self.gens, self.tags, self.next_ids = [], [], [], [], []
            return
        sel = torch.tensor(idx, dtype=torch.long, device=self.mask.device)
        # next_ids are those of the last pick; between steps (a row dropped) they are stale
        picked = len(self.next_ids) == len(self.plans)
        self.next_ids = [self.next_ids[i] for i in idx] if picked else []
        for name in ("plans", "outs", "gens", "tags"):
            values = getattr(self, name)
            setattr(self, name, [values[i] for i in idx])
        self.state = self.state.select(idx)
        self.past.batch_select_indices(sel)
        self.mask, self.pos = self.mask[sel], self.pos[sel]
        self.logits = self.logits[sel]
        first = int(self.mask.any(0).int().argmax())  # left padding shared by all kept rows
        if first > 0 and _mergeable(self.past):
            self.mask = self.mask[:, first:]
            for layer in self.past.layers:
                layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]

    def merge(self, other: _Rows) -> None:
        """Append ``other``'s rows, left-padding the shorter cache with masked positions."""
        length = max(self.mask.shape[1], other.mask.shape[1])
        pads = [length - rows.mask.shape[1] for rows in (self, other)]
        for mine, theirs in zip(self.past.layers, other.past.layers, strict=True):
            mine.keys = torch.cat([F.pad(mine.keys, (0, 0, pads[0], 0)),
                                   F.pad(theirs.keys, (0, 0, pads[1], 0))])
            mine.values = torch.cat([F.pad(mine.values, (0, 0, pads[0], 0)),
                                     F.pad(theirs.values, (0, 0, pads[1], 0))])
        self.mask = torch.cat([F.pad(self.mask, (pads[0], 0)), F.pad(other.mask, (pads[1], 0))])
        self.pos = torch.cat([self.pos, other.pos])
        self.logits = torch.cat([self.logits, other.logits])
        self.state = self.state.concat(other.state)
        for name in ("plans", "outs", "gens", "tags"):
            getattr(self, name).extend(getattr(other, name))
        self.next_ids = []


class BatchGenerator:
    """Runs ``RowPlan`` batches on a frozen model with injected LoRA wrappers."""

    def __init__(self, model, tokenizer, layout: ModelLayout, pooling: str) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.layout = layout
        self.pooling = pooling
        self.single_pass = min(layout.lora_layers, default=layout.key_layer) >= layout.key_layer
        install_key_hook(get_module(model, layout.blocks_path)[layout.key_layer])
        self.eos = tokenizer.eos_token_id
        # every row ignores EOS (as each row's ``RowPlan.ignore_eos``), for benchmarks and tests
        self.ignore_eos = False
        self.stats = GenerationStats()
        self._stats_lock = threading.Lock()

    def _count(self, **deltas: float) -> None:
        with self._stats_lock:
            for name, value in deltas.items():
                setattr(self.stats, name, getattr(self.stats, name) + value)

    def generate(self, plans: Sequence[RowPlan], router: RouterFn) -> list[RowOutput]:
        rows = self.prefill(plans, router, [None] * len(plans), eager_text=False)
        outs = list(rows.outs)
        while len(rows):
            self.step(rows)
        return outs

    @torch.no_grad()
    def stream(self, plans: Sequence[RowPlan], router: RouterFn) -> Iterator[list[RowOutput]]:
        """Yields the rows' outputs after routing and after every decoding step."""
        rows = self.prefill(plans, router, [None] * len(plans), eager_text=True)
        outs = list(rows.outs)
        yield outs
        while len(rows):
            finished = self._pick(rows)
            yield outs
            self._advance(rows, finished)

    # ------------------------------------------------------------------ steps
    @torch.no_grad()
    def prefill(self, plans: Sequence[RowPlan], router: RouterFn, tags: Sequence[Any],
                 eager_text: bool) -> _Rows:
        """Route and prefill ``plans``: rows ready for their first token."""
        started = time.perf_counter()
        route_s = 0.0
        batch = encode_batch(self.model, self.tokenizer, [p.prompt for p in plans])
        mask = batch["attention_mask"]
        outs = [RowOutput(prompt_tokens=int(m.sum()), route=p.route) for p, m in zip(plans, mask,
                                                                                   strict=True)]
        adapters: list[AdapterWeights | None] = [None if p.auto else p.adapter for p in plans]
        auto_rows = [i for i, p in enumerate(plans) if p.auto]
        deferred = _Deferred()

        def decide(raw: torch.Tensor) -> None:
            for i, (route, adapter) in zip(auto_rows, router(raw), strict=True):
                outs[i].route = route
                adapters[i] = adapter
            deferred.inner = BatchState(adapters, self.model.dtype, mask.device)

        def route_here(hidden: torch.Tensor) -> None:
            nonlocal route_s
            if deferred.inner is None:
                t = time.perf_counter()
                rows = torch.tensor(auto_rows, dtype=torch.long, device=hidden.device)
                decide(pool(hidden[rows], mask[rows], self.pooling))
                route_s += time.perf_counter() - t

        if not auto_rows:
            deferred.inner = BatchState(adapters, self.model.dtype, mask.device)
        elif not self.single_pass:
            t = time.perf_counter()
            decide(raw_keys(self.model, self.tokenizer, self.layout,
                            [plans[i].prompt for i in auto_rows], self.pooling))
            route_s += time.perf_counter() - t
        with use_state(deferred), on_key_layer(route_here):
            out = self.model(**batch, use_cache=True)
        gens = [torch.Generator().manual_seed(p.seed % 2**63) if p.seed is not None else None
                for p in plans]
        self._count(prefills=1, rows=len(plans), prefill_s=time.perf_counter() - started,
                    route_s=route_s)
        if deferred.inner is None:
            raise RuntimeError("the routing hook did not run during the prefill")
        return _Rows(list(plans), outs, gens, list(tags), deferred.inner, out.past_key_values,
                     mask, batch["position_ids"][:, -1:], out.logits[:, -1, :], eager_text)

    def _suppress_eos(self, rows: _Rows) -> None:
        """As vLLM's ``min_tokens``: EOS cannot be picked by rows that have fewer tokens."""
        if self.eos is None or self.ignore_eos:
            return
        short = [i for i, (plan, row) in enumerate(zip(rows.plans, rows.outs, strict=True))
                 if not row.done and not plan.ignore_eos
                 and len(row.token_ids) < plan.min_tokens]
        if short:
            rows.logits = rows.logits.clone()
            rows.logits[short, self.eos] = float("-inf")

    def _pick(self, rows: _Rows) -> list[int]:
        """Choose every row's next token; the indices of the rows that finished."""
        self._suppress_eos(rows)
        greedy = rows.logits.argmax(-1).tolist()  # one call for the batch; ties as row argmax
        rows.next_ids = []
        finished = []
        picked = 0
        for i, (plan, row) in enumerate(zip(rows.plans, rows.outs, strict=True)):
            if row.done:  # kept only where the cache cannot drop rows
                rows.next_ids.append(self.tokenizer.pad_token_id)
                continue
            picked += 1
            if plan.temperature < MIN_TEMPERATURE:
                token = greedy[i]
            else:
                token = _pick(rows.logits[i], plan, rows.gens[i])
            rows.next_ids.append(token)
            self._append(row, plan, token, rows.eager_text)
            if row.done:
                finished.append(i)
        self._count(tokens=picked)
        return finished

    @torch.no_grad()
    def _advance(self, rows: _Rows, finished: list[int]) -> None:
        """Drop the finished rows; one decoding forward for the others."""
        if all(row.done for row in rows.outs):
            rows.keep([])
            return
        if finished and _mergeable(rows.past):
            gone = set(finished)
            rows.keep([i for i in range(len(rows)) if i not in gone])
        started = time.perf_counter()
        ids = torch.tensor(rows.next_ids, dtype=torch.long, device=rows.mask.device).unsqueeze(-1)
        rows.mask = torch.cat([rows.mask, torch.ones_like(ids)], dim=-1)
        rows.pos = rows.pos + 1
        with use_state(rows.state):
            out = self.model(input_ids=ids, attention_mask=rows.mask, position_ids=rows.pos,
                             past_key_values=rows.past, use_cache=True)
        rows.past = out.past_key_values
        rows.logits = out.logits[:, -1, :]
        self._count(decode_steps=1, decode_rows=len(rows),
                    decode_s=time.perf_counter() - started)

    def step(self, rows: _Rows) -> list[tuple[Any, RowOutput]]:
        """One token for every row; the (tag, output) of the rows that finished."""
        finished = self._pick(rows)
        done = [(rows.tags[i], rows.outs[i]) for i in finished]
        self._advance(rows, finished)
        return done

    def _append(self, row: RowOutput, plan: RowPlan, token: int, eager_text: bool) -> None:
        if token == self.eos and not (plan.ignore_eos or self.ignore_eos):
            row.done, row.finish_reason = True, "stop"
            row.text = self._decode(row.token_ids)
            return
        row.token_ids.append(token)
        eager = eager_text or plan.stream or bool(plan.stop)
        if eager:
            row.text = self._decode(row.token_ids)
        if plan.stop and len(row.token_ids) < plan.min_tokens:
            row.stop_from = len(row.text)  # as vLLM: stop strings are checked from min_tokens
        elif plan.stop:
            for s in plan.stop:
                cut = row.text.find(s, max(0, row.stop_from - len(s) + 1))
                if cut >= 0:
                    row.text = row.text[:cut]
                    row.done, row.finish_reason = True, "stop"
                    return
        if len(row.token_ids) >= plan.max_new_tokens:
            row.done, row.finish_reason = True, "length"
            if not eager:  # decoded once, at the end
                row.text = self._decode(row.token_ids)

    def _decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)


class RunningBatch:
    """Continuous batching: rows join between decoding steps and leave as soon as they finish.

    ``add`` routes and prefills new rows (one forward for all of them) and appends them to the
    running rows; ``step`` gives every row one token and returns the rows that finished. Not
    thread-safe: one caller at a time (the service's generation worker)."""

    def __init__(self, generator: BatchGenerator) -> None:
        self._gen = generator
        self._rows: _Rows | None = None

    def __len__(self) -> int:
        return 0 if self._rows is None else len(self._rows)

    @property
    def can_join(self) -> bool:
        """Whether new rows can join now (always, unless the model's cache cannot be merged
        and rows are running: then new rows wait until the batch is empty)."""
        return self._rows is None or _mergeable(self._rows.past)

    def add(self, plans: Sequence[RowPlan], router: RouterFn, tags: Sequence[Any]) -> None:
        """Route and prefill ``plans`` (tagged ``tags``) and let them join the running rows.
        If the prefill fails, the running rows are untouched."""
        if not self.can_join:
            raise RuntimeError("rows cannot join this batch now; check can_join")
        new = self._gen.prefill(plans, router, tags, eager_text=False)
        if self._rows is None:
            self._rows = new
        else:
            self._rows.merge(new)

    def step(self) -> list[tuple[Any, RowOutput]]:
        """One token for every row; the (tag, output) of the rows that finished."""
        if self._rows is None:
            return []
        try:
            done = self._gen.step(self._rows)
        except BaseException:
            self._rows = None  # a failed forward leaves the cache in an unknown state
            raise
        if not len(self._rows):
            self._rows = None
        return done

    def tags(self) -> list[Any]:
        """Tags of the running rows."""
        return [] if self._rows is None else list(self._rows.tags)

    def outputs(self) -> list[tuple[Any, RowOutput]]:
        """(tag, output so far) of the running rows; an output is updated in place by
        ``step`` (its text after every token only for streamed rows)."""
        if self._rows is None:
            return []
        return [(t, o) for t, o in zip(self._rows.tags, self._rows.outs, strict=True)
                if not o.done]

    def drop(self, gone: Callable[[Any], bool]) -> list[Any]:
        """Remove the running rows whose tag ``gone`` accepts (a client that went away) before
        the next step; their tags. Their cache rows are dropped (or, on a cache that cannot
        drop rows, they stay as padding, finished)."""
        rows = self._rows
        if rows is None:
            return []
        idx = [i for i, (t, o) in enumerate(zip(rows.tags, rows.outs, strict=True))
               if not o.done and gone(t)]
        if not idx:
            return []
        tags = [rows.tags[i] for i in idx]
        if _mergeable(rows.past):
            leaving = set(idx)
            rows.keep([i for i in range(len(rows)) if i not in leaving])
        else:
            for i in idx:
                rows.outs[i].done = True
        if not len(rows) or all(o.done for o in rows.outs):
            self._rows = None
        return tags
