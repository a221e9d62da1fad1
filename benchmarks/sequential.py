"""The sequential protocol (WISE's): the stream's requests are applied in batches, one update
after another, and at each checkpoint T the model is evaluated on all T requests applied so far.

One run to the largest T serves every checkpoint: the state after T requests does not depend on
what comes later, so it is exactly what a run stopped at T would evaluate.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.evaluate import Outputs, collect, compute_metrics, max_new_tokens
from benchmarks.methods import Budget, get_method
from benchmarks.protocol import Sequential

logger = logging.getLogger(__name__)


def run_sequential(method: str, seq: Sequential, model_dir: Path, base: Outputs, tokenizer,
                   budget: Budget, seed: int, workroot: Path | None = None) -> dict[str, Any]:
    """Apply the stream with ``method``; metrics at every checkpoint."""
    stream = seq.stream
    checkpoints = sorted(t for t in seq.checkpoints if t <= len(stream))
    n_tokens = max_new_tokens(seq.setting, tokenizer)
    points: list[dict[str, Any]] = []
    batches: list[dict[str, Any]] = []  # seconds of each update against the requests before it
    update_seconds = 0.0
    steps = 0
    served = None
    with tempfile.TemporaryDirectory(dir=workroot, prefix=f"seq-{method}-") as tmp:
        try:
            done = 0
            while done < checkpoints[-1]:
                batch = stream[done:done + seq.batch]
                nxt = min(t for t in checkpoints if t > done)
                batch = batch[: nxt - done]  # never step over a checkpoint
                pieces = [c.spec() for c in batch]
                started = time.perf_counter()
                if served is None:
                    served = get_method(method)(model_dir, pieces, seq.setting.retain_train,
                                                budget, seed, Path(tmp))
                else:
                    served.update(pieces, seq.setting.retain_train)
                seconds = time.perf_counter() - started
                update_seconds += seconds
                steps += served.last_update.optimiser_steps
                batches.append({"before": done, "size": len(batch), "seconds": round(seconds, 3),
                                "optimiser_steps": served.last_update.optimiser_steps})
                done += len(batch)
                if done in checkpoints:
                    cases = stream[:done]
                    t0 = time.perf_counter()
                    out = collect(served, seq.setting, n_tokens, cases)
                    metrics = compute_metrics(seq.setting, out, base, tokenizer, cases)
                    points.append({"T": done, "metrics": metrics,
                                   "update_seconds": round(update_seconds, 2),
                                   "optimiser_steps": steps,
                                   "eval_seconds": round(time.perf_counter() - t0, 2),
                                   "footprint_bytes": served.footprint_bytes(),
                                   "info": served.info()})
                    logger.info("sequential %s T=%d: edit %.2f unlearn %.2f locality %.2f",
                                method, done, metrics["edit_rel_acc"], metrics["unlearn_eff"],
                                metrics["locality"])
        finally:
            if served is not None:
                served.close()
    return {"method": method, "seed": seed, "batch": seq.batch, "points": points,
            "batches": batches, "flatness": flatness(batches)}


def flatness(batches: list[dict[str, Any]]) -> dict[str, float | None]:
    """Does an update cost what it touches, not the codebook's size? Seconds per piece of the
    first and the last quarter of the updates (the first update, which also loads the model, left
    out) and their ratio: about 1 when flat, growing with T when not."""
    rest = batches[1:]
    if len(rest) < 4:
        return {"first_quarter_s_per_piece": None, "last_quarter_s_per_piece": None,
                "ratio": None}
    q = max(1, len(rest) // 4)

    def per_piece(part: list[dict[str, Any]]) -> float:
        return sum(b["seconds"] for b in part) / max(1, sum(b["size"] for b in part))

    first, last = per_piece(rest[:q]), per_piece(rest[-q:])
    return {"first_quarter_s_per_piece": round(first, 3),
            "last_quarter_s_per_piece": round(last, 3),
            "ratio": round(last / first, 3) if first > 0 else None}
