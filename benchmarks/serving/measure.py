"""Base model, LOKA and the naive baseline side by side on one model, in one process.

The store holds 64 synthetic memories (``codebook.py``), memory i keyed on prompt i, so client w
of a load run (always sending prompt w) is routed to its own memory: every request in flight
uses a different memory. "Base" is the same service with ``memory="none"`` (no routing, no
LoRA); "LOKA" is ``memory="auto"`` (gate, search, per-row LoRA). Every request generates exactly
32 tokens (EOS ignored, as vLLM's ``ignore_eos``), so all systems do the same work.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.serving.http import LoadResult, closed_loop, running_service, send
from benchmarks.serving.models import BenchModel
from benchmarks.serving.naive import NaivePeft
from memory_store import Loka
from memory_store.codebook.synthetic import publish_synthetic
from memory_store.models.builtin import FACTS
from memory_store.serving.batching import GenerationStats
from memory_store.types import GenerationRequest
from service.config import Settings

logger = logging.getLogger(__name__)

N_MEMORIES = 64
NEW_TOKENS = 32
CONCURRENCY = (1, 4, 16, 64)


@dataclass(frozen=True)
class Budget:
    """How many requests each measurement sends (bounded so a full run stays short)."""

    latency_pairs: int  # base/LOKA request pairs, one at a time
    throughput: dict[int, int]  # concurrency -> requests per system and repeat
    repeats: int  # base/LOKA runs alternate this many times; the median run is reported
    naive: int  # requests served by the naive baseline


BUDGETS = {
    "default": Budget(30, {1: 16, 4: 32, 16: 96, 64: 256}, 3, 32),
    "large": Budget(5, {1: 3, 4: 8, 16: 32, 64: 64}, 1, 4),
    "quick": Budget(10, {1: 4, 4: 8, 16: 32, 64: 64}, 1, 8),
}


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _ms(values: list[float]) -> dict[str, float]:
    return {"p50_ms": round(1000 * _pct(values, 0.5), 2),
            "p95_ms": round(1000 * _pct(values, 0.95), 2), "n": len(values)}


def _delta(before: GenerationStats, after: GenerationStats) -> dict[str, float]:
    d = {k: getattr(after, k) - v for k, v in before.__dict__.items()}
    return {**{k: round(v, 4) for k, v in d.items()},
            "rows_per_step": round(d["decode_rows"] / max(d["decode_steps"], 1), 2)}


def _load(url: str, prompts: list[str], c: int, n: int, memory: str, stats) -> dict:
    before = stats.copy()
    run: LoadResult = closed_loop(url, prompts, c, max(1, n // c), memory, NEW_TOKENS)
    lat = [a.latency for a in run.answers]
    return {"tokens_per_s": round(run.tokens_per_s, 1), "requests": len(lat),
            "tokens": run.tokens, "seconds": round(run.seconds, 3), **_ms(lat),
            "routed": sum(a.memory_id is not None for a in run.answers),
            "engine": _delta(before, stats)}


def _median_run(runs: list[dict]) -> dict:
    """The run of median throughput, with every run's throughput alongside."""
    ordered = sorted(runs, key=lambda r: r["tokens_per_s"])
    return {**ordered[(len(ordered) - 1) // 2],
            "all_tokens_per_s": [r["tokens_per_s"] for r in runs]}


def measure(bm: BenchModel, budget: Budget, workdir: Path) -> dict:
    """Latency, throughput, routing cost and the naive baseline on ``bm``."""
    prompts = [f.prompts[0] for f in FACTS][:N_MEMORIES]
    store = Path(tempfile.mkdtemp(prefix="serving-", dir=workdir))
    loka = Loka.open(store, bm.path, threads=bm.threads)
    params = loka.model.num_parameters()
    memories = publish_synthetic(loka, prompts, N_MEMORIES)
    loka.close()
    settings = Settings(model=str(bm.path), store_dir=store, threads=bm.threads,
                        max_batch_size=max(CONCURRENCY), log_level="warning")
    out: dict = {"model": bm.name, "parameters": params, "threads": bm.threads or 1,
                 "memories": N_MEMORIES, "new_tokens": NEW_TOKENS}
    with running_service(settings) as svc:
        engine = svc.state.engine
        stats = engine.generator.stats
        engine.generator.ignore_eos = True
        routes = engine.route(prompts)
        out["routed_to_own_memory"] = sum(
            r.memory_id == m for r, (m, _) in zip(routes, memories, strict=True)) / len(prompts)
        closed_loop(svc.url, prompts, 4, 1, "auto", NEW_TOKENS)  # warm-up
        closed_loop(svc.url, prompts, 4, 1, "none", NEW_TOKENS)
        out["latency"] = _latency(svc.url, engine, prompts, budget.latency_pairs)
        logger.info("%s: latency %s", bm.name, out["latency"]["http"])
        out["throughput"] = {}
        for c in CONCURRENCY:
            n = budget.throughput[c]
            runs: dict[str, list[dict]] = {"none": [], "auto": []}
            for r in range(budget.repeats):  # alternating: the machine's drift hits both
                for m in ("none", "auto") if r % 2 == 0 else ("auto", "none"):
                    runs[m].append(_load(svc.url, prompts, c, n, m, stats))
            out["throughput"][c] = {"base": _median_run(runs["none"]),
                                    "loka": _median_run(runs["auto"])}
            runs = {m: out["throughput"][c][k] for m, k in (("none", "base"), ("auto", "loka"))}
            logger.info("%s: concurrency %d: base %.0f tok/s, LOKA %.0f tok/s", bm.name, c,
                        runs["none"]["tokens_per_s"], runs["auto"]["tokens_per_s"])
        out["routing"] = _routing(engine, prompts, out)
    naive = NaivePeft(bm.path, [(m, store / d) for m, d in memories])
    naive.generate(prompts[0], memories[0][0], 2)  # warm-up
    work = [(prompts[i % N_MEMORIES], memories[i % N_MEMORIES][0]) for i in range(budget.naive)]
    run = naive.serve(work, NEW_TOKENS)
    out["naive"] = {"tokens_per_s": round(run.tokens_per_s, 1), "requests": run.requests,
                    **_ms(list(run.latencies))}
    logger.info("%s: naive %.0f tok/s", bm.name, run.tokens_per_s)
    del naive
    _ratios(out)
    return out


def _latency(url: str, engine: Loka, prompts: list[str], pairs: int) -> dict:
    """One request at a time, base and LOKA alternating (the machine's noise hits both): over
    HTTP, and in-process through ``Loka.generate`` (no HTTP)."""
    bodies = []
    for i in range(pairs):
        for memory in ("none", "auto"):
            bodies.append({"prompt": prompts[i % len(prompts)], "max_new_tokens": NEW_TOKENS,
                           "memory": memory})
    answers = send(url, [bodies]).workers[0]
    http = {"base": _ms([a.latency for a in answers[0::2]]),
            "loka": _ms([a.latency for a in answers[1::2]])}
    times: dict[str, list[float]] = {"none": [], "auto": []}
    routing: list[float] = []
    stats = engine.generator.stats
    for i in range(pairs):
        for memory in ("none", "auto"):
            req = GenerationRequest(prompts[i % len(prompts)], NEW_TOKENS, memory=memory)
            route_before = stats.route_s
            t = time.perf_counter()
            engine.generate([req])
            times[memory].append(time.perf_counter() - t)
            if memory == "auto":
                routing.append(stats.route_s - route_before)
    inproc = {"base": _ms(times["none"]), "loka": _ms(times["auto"])}
    return {"http": http, "engine": inproc, "routing": _ms(routing)}


def _routing(engine: Loka, prompts: list[str], out: dict) -> dict:
    """Routing cost of a request served alone, inside its prefill (pooling, centring, gate,
    search, adapter lookup and per-row LoRA set-up: the engine's counters around each in-process
    request of ``_latency``), against the whole 32-token request; and what a separate key pass
    (the design LOKA avoids) would cost on top."""
    route_ms = out["latency"]["routing"]["p50_ms"]
    keys = []
    for p in prompts[:16]:
        t = time.perf_counter()
        engine.keys([p])
        keys.append(time.perf_counter() - t)
    request_ms = out["latency"]["engine"]["loka"]["p50_ms"]
    return {"in_prefill_ms": route_ms, "in_prefill_p95_ms": out["latency"]["routing"]["p95_ms"],
            "request_p50_ms": request_ms,
            "fraction_of_request": round(route_ms / request_ms, 4),
            "separate_key_pass_ms": round(1000 * statistics.median(keys), 3)}


def _ratios(out: dict) -> None:
    lat = out["latency"]
    out["ratios"] = {
        "latency_p50_http": round(lat["http"]["loka"]["p50_ms"] / lat["http"]["base"]["p50_ms"],
                                  3),
        "latency_p50_engine": round(
            lat["engine"]["loka"]["p50_ms"] / lat["engine"]["base"]["p50_ms"], 3),
        "throughput_vs_base": {c: round(t["loka"]["tokens_per_s"] / t["base"]["tokens_per_s"], 3)
                               for c, t in out["throughput"].items()},
        "throughput_vs_naive": {c: round(t["loka"]["tokens_per_s"] / out["naive"]["tokens_per_s"],
                                         2) for c, t in out["throughput"].items()},
    }
