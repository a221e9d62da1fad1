"""Run the whole serving benchmark and write ``results.json``, ``results.md`` and the plots."""

from __future__ import annotations

import datetime
import json
import logging
import os
import platform
import shlex
import tempfile
import time
from pathlib import Path

from benchmarks.serving import DEFAULT_OUT

logger = logging.getLogger(__name__)


NOTES = [
    "- **What runs**: one process serves the real service (uvicorn on 127.0.0.1) with the model;"
    " HTTP clients run in a child process (closed loop: each client sends its next request when"
    " the last one is answered). *Base* = the same service with `memory=\"none\"` (no routing, "
    "no LoRA); *LOKA* = `memory=\"auto\"` (in-prefill routing + per-row LoRA, continuous "
    "batching); *naive* = one `PeftModel` holding every adapter, `set_adapter` + HF `generate` "
    "per request, serially, in-process and told the memory (no HTTP, no routing: both favour "
    "it). Its throughput does not depend on concurrency (requests queue).",
    "- **Memories** for serving, routing and memory measurements are synthetic: random LoRA "
    "weights of the store's shape (rank 8 on the MLPs of the layers from the key layer up), one "
    "piece each keyed on a real prompt's real key, a gate trained as an update trains it. Speed "
    "does not depend on what a memory learned. Update latency uses real updates.",
    "- Every request generates exactly 32 tokens (EOS ignored, as vLLM's `ignore_eos`). "
    "Greedy decoding.",
    "- The machine is shared (2 cores, other jobs running): absolute numbers are noisy; "
    "ratios come from the same run, with base and LOKA alternating.",
    "- What the serving-path changes bought, measured before and after: "
    "[hot_path.md](hot_path.md).",
]


def _machine() -> str:
    cpus = os.cpu_count()
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    return f"{platform.machine()} {cpus} CPU(s), load average {load:.1f} at start"


def run(quick: bool, out: Path, large_threads: int) -> dict:
    """Every measurement; the results dictionary."""
    from benchmarks.serving import measure, memory, search, updates
    from benchmarks.serving.models import BenchModel, bench_models
    from memory_store import Loka

    started = time.perf_counter()
    models = bench_models(quick)
    models = [BenchModel(m.name, m.path, large_threads if m.threads else None) for m in models]
    res: dict = {"serving": []}
    with tempfile.TemporaryDirectory(prefix="loka-serving-") as tmp:
        work = Path(tmp)
        for i, bm in enumerate(models):
            budget = measure.BUDGETS["quick" if quick else ("default" if i == 0 else "large")]
            res["serving"].append(measure.measure(bm, budget, work))
        default = models[0].path
        loka = Loka.open(work / "search-store", default)
        sizes = (1_000, 10_000) if quick else (1_000, 10_000, 100_000)
        res["search"] = search.measure(loka, sizes, None if quick else 768)
        loka.close()
        res["memory"] = memory.measure(
            default, (100, 1_000) if quick else (100, 1_000, 10_000),
            (64, 0) if quick else (64, 256, 0), work)
        res["updates"] = updates.measure(default, (1, 5) if quick else (1, 20, 100), work)
        logger.info("removing the temporary stores")
    res["meta"] = {
        "command": command(quick, out, large_threads),
        "machine": _machine(), "date": datetime.date.today().isoformat(),
        "seconds": round(time.perf_counter() - started, 1), "quick": quick,
        "large_model_threads": large_threads,
        "notes": NOTES + [
            f"- Torch threads: 1 for the built-in model (as `Loka.open` picks below 50M "
            f"parameters); {large_threads} for the 87M model (`--large-threads`). On this loaded"
            " 2-core machine 1 thread served the 87M model ~6x faster than 2 (HF `generate`, 32 "
            "tokens, batch 1: 0.84 s vs 5.2 s; batch 16: 2.8 s vs 14.0 s)."],
    }
    return res


def write(res: dict, out: Path) -> None:
    from benchmarks.serving.report import plots, render

    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=2))
    loaded = json.loads((out / "results.json").read_text())  # string keys, as readers see them
    loaded["plots"] = plots(loaded, out)
    (out / "results.md").write_text(render(loaded))
    res["plots"] = loaded["plots"]
    (out / "results.json").write_text(json.dumps(res, indent=2))


def command(quick: bool, out: Path, large_threads: int) -> str:
    """The command line that reruns this measurement."""
    parts = ["python", "-m", "benchmarks.serving"] + (["--quick"] if quick else [])
    if out != DEFAULT_OUT:
        parts += ["--out", str(out)]
    if large_threads != 1:
        parts += ["--large-threads", str(large_threads)]
    return shlex.join(parts)


def run_and_write(quick: bool, out: Path, large_threads: int) -> int:
    """Run everything, write the results; the exit status."""
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "faiss.loader", "memory_store.engine"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    res = run(quick, out, large_threads)
    write(res, out)
    logger.info("wrote %s", out / "results.md")
    return 0
