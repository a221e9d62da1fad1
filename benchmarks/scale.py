"""Scale-out measurements.

``update-cost``: the wall time of one small real update (one edit, a few training steps) on a
codebook that already holds 100, 1,000 and 10,000 pieces. The stored pieces are synthetic
(random adapters and keys written straight to the store: ``memory_store.codebook.synthetic``),
since training 10,000 real memories would take hours on CPU; the timed update is real (keys,
mapping, training, index, gate, publish, loading the new version). The update's cost should
grow with what it touches, not with the codebook.

``head-switch``: runs ``tests/scale/test_replicas.py`` (3 API replicas and 2 workers on a real
PostgreSQL, 30 updates) and reports how long each replica took to serve each new version.

    python -m benchmarks.scale update-cost [--sizes 100 1000 10000]
    python -m benchmarks.scale head-switch

Both write ``<name>.json`` and ``<name>.md`` (``update-cost`` also a PNG plot) under
``benchmarks/results/scale/``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from memory_store import Loka
from memory_store.codebook.synthetic import publish_synthetic
from memory_store.types import PieceKind, PieceSpec, UpdateOptions

logger = logging.getLogger(__name__)

RESULTS = Path(__file__).resolve().parent / "results" / "scale"
REPO_ROOT = Path(__file__).resolve().parents[1]


def _machine() -> dict:
    return {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__,
            "platform": platform.platform()}


def measure_update_cost(size: int, steps: int, repeats: int) -> dict:
    """Seconds of ``repeats`` single-edit updates on a codebook of ``size`` synthetic pieces."""
    with tempfile.TemporaryDirectory(prefix="loka-scale-") as tmp:
        store = Path(tmp) / "store"
        loka = Loka.open(store)
        started = time.perf_counter()
        publish_synthetic(loka, [], size, seed=size)
        loka.refresh()
        setup_s = time.perf_counter() - started
        assert len(loka.pieces()) == size
        times, stages = [], []
        for i in range(repeats):
            spec = PieceSpec(kind=PieceKind.EDIT, prompt=f"The access code of vault {i} is",
                             target=f" {1000 + i}")
            marks: dict[str, float] = {}
            t0 = time.perf_counter()

            def progress(stage: str, step: int, total: int, marks=marks, t0=t0) -> None:
                marks.setdefault(stage, time.perf_counter() - t0)

            result = loka.update([spec], options=UpdateOptions(steps=steps), progress=progress)
            times.append(time.perf_counter() - t0)
            stages.append({**marks, "total": times[-1]})
            assert result.codebook_version == loka.version
        loka.close()
    return {"pieces": size, "steps": steps, "setup_s": setup_s, "update_s": times,
            "median_s": statistics.median(times), "stage_marks_s": stages}


def update_cost(args: argparse.Namespace) -> None:
    runs = []
    for size in args.sizes:
        logger.info("codebook of %d pieces", size)
        runs.append(measure_update_cost(size, args.steps, args.repeats))
        logger.info("%d pieces: median %.2f s", size, runs[-1]["median_s"])
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    data = {"benchmark": "update cost against codebook size",
            "command": "python -m benchmarks.scale update-cost " + " ".join(sys.argv[2:]),
            "machine": _machine(), "runs": runs}
    (out / "update_cost.json").write_text(json.dumps(data, indent=2) + "\n")
    lines = ["# Update time against codebook size", "",
             f"`{data['command'].strip()}` on {data['machine']['cpu_count']} CPU cores "
             f"(torch {data['machine']['torch']}). One real update (one edit, "
             f"{args.steps} training steps) on a codebook of N synthetic pieces; "
             f"{args.repeats} updates per size.", "",
             "| stored pieces | median update (s) | each update (s) |", "|---:|---:|---|"]
    for r in runs:
        each = ", ".join(f"{t:.2f}" for t in r["update_s"])
        lines.append(f"| {r['pieces']:,} | {r['median_s']:.2f} | {each} |")
    lines += ["", "Time from the start of the update to the start of each stage "
              "(first update of each size, seconds):", "",
              "| stored pieces | " + " | ".join(runs[0]["stage_marks_s"][0]) + " |",
              "|---:|" + "---:|" * len(runs[0]["stage_marks_s"][0])]
    for r in runs:
        marks = r["stage_marks_s"][0]
        lines.append(f"| {r['pieces']:,} | "
                     + " | ".join(f"{marks.get(k, float('nan')):.2f}"
                                  for k in runs[0]["stage_marks_s"][0]) + " |")
    (out / "update_cost.md").write_text("\n".join(lines) + "\n")
    _plot(runs, out / "update_cost.png")
    logger.info("\n%s", "\n".join(lines))


def _plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    sizes = [r["pieces"] for r in runs]
    ax.plot(sizes, [r["median_s"] for r in runs], marker="o", label="median")
    for r in runs:
        ax.scatter([r["pieces"]] * len(r["update_s"]), r["update_s"], s=8, color="grey")
    ax.set_xscale("log")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("stored pieces")
    ax.set_ylabel("update time (s)")
    ax.set_title("One small update against codebook size")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def head_switch(args: argparse.Namespace) -> None:
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    raw = out / "head_switch.json"
    env = {**os.environ, "LOKA_SCALE_RESULTS": str(raw)}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
           "tests/scale/test_replicas.py"]
    subprocess.run(cmd, cwd=REPO_ROOT, env=env, check=True)
    data = json.loads(raw.read_text())
    data["command"] = "python -m benchmarks.scale head-switch"
    raw.write_text(json.dumps(data, indent=2) + "\n")
    a = data["head_switch_all_versions"]
    lines = ["# Head-switch delay across replicas", "",
             f"`{data['command']}`: {data['replicas']} API replicas (`loka serve --no-worker`) "
             f"and {data['workers']} workers (`loka worker`, one SIGKILLed mid-publish) on one "
             f"PostgreSQL, {data['updates']} updates posted round-robin; {data['cpu_count']} "
             "CPU cores shared by every process. Delay = from the version's `created_at` (taken in "
             "its publishing transaction, just before the commit) to the first "
             f"`/v1/codebook` answer of a replica naming it (polled every "
             f"{data['poll_interval_ms']:.0f} ms, which bounds the resolution).", "",
             "| | versions seen | median (ms) | p95 (ms) | max (ms) |", "|---|---:|---:|---:|---:|",
             f"| all replicas | {a['n']} | {a['median_ms']:.0f} | {a['p95_ms']:.0f} | "
             f"{a['max_ms']:.0f} |"]
    for i, r in enumerate(data["head_switch_per_replica"]):
        lines.append(f"| replica {i} | {r['n']} | {r['median_ms']:.0f} | {r['p95_ms']:.0f} | "
                     f"{r['max_ms']:.0f} |")
    lines += ["", f"Final version {data['final_version']}: served by the replicas after "
              + ", ".join(f"{d:.0f}" for d in data["final_version_delay_ms"])
              + f" ms (spread {data['final_version_spread_ms']:.0f} ms)."]
    (out / "head_switch.md").write_text("\n".join(lines) + "\n")
    logger.info("\n%s", "\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("update-cost", help="update time at 100, 1,000, 10,000 stored pieces")
    p.add_argument("--sizes", type=int, nargs="+", default=[100, 1_000, 10_000])
    p.add_argument("--steps", type=int, default=10, help="training steps of the timed update")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.set_defaults(func=update_cost)
    p = sub.add_parser("head-switch", help="head-switch delay of 3 replicas on PostgreSQL")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.set_defaults(func=head_switch)
    args = parser.parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
