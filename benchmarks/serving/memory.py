"""Resident memory against codebook size, with the LRU cache of materialised adapters.

For each codebook size (synthetic memories on the built-in model, ``codebook.py``) and cache
size, a fresh process opens the store, serves one request with a fixed memory for *every*
memory of the codebook (batches of 64, one new token each: every adapter is read from disk once
and the cache evicts as it goes), and reports its resident set size before and after, its peak,
what it still holds once freed memory is handed back to the system (``malloc_trim``: glibc keeps
freed heap memory for reuse, so the plain resident set also counts the allocator's reserve,
which varies from run to run), and what a cache miss costs. A fresh process per point, so that
points measured one after the other do not share an allocator.

    python -m benchmarks.serving.memory --store DIR --model DIR --cache 256   # one point
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

logger = logging.getLogger(__name__)

BATCH = 64


def _rss_mib() -> tuple[float, float]:
    """(current, peak) resident set size of this process in MiB."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return round(fields["VmRSS"], 1), round(fields["VmHWM"], 1)


def _return_freed_memory() -> None:
    """Collect garbage and ask glibc to hand freed heap memory back to the system, so that the
    resident set shows what the process holds, not what its allocator kept for later."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def probe(store: Path, model: Path, cache: int) -> dict:
    """One point, in this process (run by ``point`` in a child process)."""
    from memory_store import Loka
    from memory_store.types import GenerationRequest

    loka = Loka.open(store, model, adapter_cache_size=cache)
    ids = [m.id for m in loka.memories()]
    loka.generate([GenerationRequest("warm up", 1, memory="none")])
    rss_open, _ = _rss_mib()
    miss, hit = [], []
    for start in range(0, len(ids), BATCH):
        batch = [GenerationRequest("The capital of Veltoria is", 1, memory=m)
                 for m in ids[start:start + BATCH]]
        t = time.perf_counter()
        loka.generate(batch)  # every adapter of the batch read from disk
        miss.append((time.perf_counter() - t) / len(batch))
        if cache >= BATCH:
            t = time.perf_counter()
            loka.generate(batch)  # all cached now
            hit.append((time.perf_counter() - t) / len(batch))
    rss_after, peak = _rss_mib()
    _return_freed_memory()
    live, _ = _rss_mib()
    rank = loka.config.lora.rank
    adapter_bytes = sum(4 * rank * (t.in_features + t.out_features) for t in loka.layout.targets)
    out = {"memories": len(ids), "cache_size": cache, "cached": len(loka.adapters),
           "adapter_kib": round(adapter_bytes / 1024, 1), "rss_open_mib": rss_open,
           "rss_after_mib": rss_after, "rss_peak_mib": peak, "rss_live_mib": live,
           "request_ms_adapter_from_disk": round(1000 * sorted(miss)[len(miss) // 2], 3),
           "request_ms_adapter_cached": round(1000 * sorted(hit)[len(hit) // 2], 3)
           if hit else None}
    loka.close()
    return out


def point(store: Path, model: Path, cache: int) -> dict:
    """One point, measured in a fresh child process."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks.serving.memory", "--store",
                           str(store), "--model", str(model), "--cache", str(cache)],
                          capture_output=True, text=True, timeout=1800, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"memory probe failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(model: Path, sizes: tuple[int, ...], caches: tuple[int, ...],
            workdir: Path) -> dict:
    """Every (codebook size, cache size) point; cache ``0`` stands for "as large as the
    codebook" (nothing evicted: what serving without an LRU would hold)."""
    from memory_store import Loka
    from memory_store.codebook.synthetic import publish_synthetic
    from memory_store.models.builtin import FACTS

    prompts = [f.prompts[0] for f in FACTS]
    points = []
    for n in sizes:
        store = workdir / f"memory-{n}"
        started = time.perf_counter()
        loka = Loka.open(store, model)
        publish_synthetic(loka, prompts, n)
        loka.close()
        logger.info("codebook of %d synthetic memories written in %.1f s", n,
                    time.perf_counter() - started)
        for cache in caches:
            p = point(store, model, cache or n)
            p["unbounded"] = cache == 0
            points.append(p)
            logger.info("memory: %d memories, cache %d: RSS %.0f -> %.0f MiB (peak %.0f, live "
                        "%.0f)", n, p["cache_size"], p["rss_open_mib"], p["rss_after_mib"],
                        p["rss_peak_mib"], p["rss_live_mib"])
    return {"points": points}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--cache", type=int, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    sys.stdout.write(json.dumps(probe(args.store, args.model, args.cache)) + "\n")


if __name__ == "__main__":
    main()
