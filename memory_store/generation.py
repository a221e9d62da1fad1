"""Batched generation in which every row may use a different memory (or none).

One prefill over the left-padded batch, then token-by-token decoding with the KV cache. Rows that
route automatically are routed *inside* the prefill: a pre-hook on the key-layer block pools the
hidden states it receives (the same numbers a standalone key computation reads), asks the router,
and installs the per-row adapters before any LoRA layer runs, so routing costs no second pass.
(When LoRA layers sit below the key layer, keys are computed in a short separate pass first.)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from memory_store.keys import encode_batch, install_key_hook, on_key_layer, pool
from memory_store.lora import AdapterWeights, BatchState, LoraState, use_state
from memory_store.model_access import ModelLayout, _get
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


@dataclass
class RowOutput:
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str = "length"
    route: Route | None = None
    prompt_tokens: int = 0
    done: bool = False


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


class Generator:
    """Runs ``RowPlan`` batches on a frozen model with injected LoRA wrappers."""

    def __init__(self, model, tokenizer, layout: ModelLayout, pooling: str) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.layout = layout
        self.pooling = pooling
        self.single_pass = min(layout.lora_layers, default=layout.key_layer) >= layout.key_layer
        install_key_hook(_get(model, layout.blocks_path)[layout.key_layer])
        self.eos = tokenizer.eos_token_id

    def generate(self, plans: Sequence[RowPlan], router: RouterFn) -> list[RowOutput]:
        outputs: list[RowOutput] = []
        for step in self.stream(plans, router):
            outputs = step
        return outputs

    @torch.no_grad()
    def stream(self, plans: Sequence[RowPlan], router: RouterFn) -> Iterator[list[RowOutput]]:
        """Yields the rows' outputs after routing and after every decoding step."""
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
            deferred.inner = BatchState(adapters, raw.dtype, raw.device)

        def route_here(hidden: torch.Tensor) -> None:
            if deferred.inner is None:
                rows = torch.tensor(auto_rows, dtype=torch.long, device=hidden.device)
                decide(pool(hidden[rows], mask[rows], self.pooling))

        if not auto_rows:
            deferred.inner = BatchState(adapters, self.model.dtype, mask.device)
        elif not self.single_pass:
            from memory_store.keys import raw_keys

            decide(raw_keys(self.model, self.tokenizer, self.layout,
                            [plans[i].prompt for i in auto_rows], self.pooling))
        with use_state(deferred), on_key_layer(route_here):
            out = self.model(**batch, use_cache=True)
        yield outs
        gens = [torch.Generator().manual_seed(p.seed % 2**63) if p.seed is not None else None
                for p in plans]
        yield from self._decode(plans, outs, deferred, out, batch, gens)

    def _decode(self, plans, outs, state, out, batch, gens) -> Iterator[list[RowOutput]]:
        past = out.past_key_values
        logits = out.logits[:, -1, :]
        mask = batch["attention_mask"]
        pos = batch["position_ids"][:, -1:]
        pad = self.tokenizer.pad_token_id
        for step in range(max((p.max_new_tokens for p in plans), default=0)):
            next_ids = []
            for i, plan in enumerate(plans):
                row = outs[i]
                if row.done or step >= plan.max_new_tokens:
                    row.done = True
                    next_ids.append(pad)
                    continue
                token = _pick(logits[i], plan, gens[i])
                next_ids.append(token)
                self._append(row, plan, token)
            yield outs
            if all(r.done for r in outs):
                return
            ids = torch.tensor(next_ids, dtype=torch.long, device=mask.device).unsqueeze(-1)
            mask = torch.cat([mask, torch.ones_like(ids)], dim=-1)
            pos = pos + 1
            with use_state(state):
                out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos,
                                 past_key_values=past, use_cache=True)
            past = out.past_key_values
            logits = out.logits[:, -1, :]

    def _append(self, row: RowOutput, plan: RowPlan, token: int) -> None:
        if token == self.eos:
            row.done, row.finish_reason = True, "stop"
            return
        row.token_ids.append(token)
        row.text = self.tokenizer.decode(row.token_ids, skip_special_tokens=True)
        for s in plan.stop:
            cut = row.text.find(s)
            if cut >= 0:
                row.text = row.text[:cut]
                row.done, row.finish_reason = True, "stop"
                return
        if len(row.token_ids) >= plan.max_new_tokens:
            row.done, row.finish_reason = True, "length"
