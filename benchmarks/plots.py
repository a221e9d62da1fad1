"""PNG figures of a benchmark run: sequential curves, the conflict histogram, storage density."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

SEQ_METRICS = (("edit_rel_acc", "edit reliability"), ("edit_gen_acc", "edit generality"),
               ("unlearn_eff", "unlearn efficacy"), ("unlearn_gen", "unlearn generality"),
               ("retain_ratio", "retain"), ("locality", "locality"))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _nan(v: Any) -> float:
    return float("nan") if v is None else float(v)


def sequential_plot(name: str, seq: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(12, 6.5), sharex=True)
    for ax, (metric, title) in zip(axes.flat, SEQ_METRICS, strict=True):
        for curve in seq["curves"]:
            ts = [p["T"] for p in curve["points"]]
            ax.plot(ts, [_nan(p["metrics"].get(metric)) for p in curve["points"]], marker="o",
                    label=curve["method"])
        ax.set_title(title)
        ax.set_xscale("log")
        ax.set_ylim(-0.02, 1.05)
        ax.set_xlabel("T (requests applied)")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"{name}: sequential updates in batches of {seq['batch']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def update_cost_plot(name: str, seq: dict[str, Any], path: Path) -> None:
    """Seconds per piece of each sequential update against the requests already applied: flat
    when an update costs what it touches, not the codebook's size."""
    curves = [c for c in seq["curves"] if c.get("batches")]
    if not curves:
        return
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for curve in curves:
        rest = curve["batches"][1:]  # the first update also loads the model
        ax.plot([b["before"] for b in rest], [b["seconds"] / b["size"] for b in rest],
                marker=".", label=curve["method"])
    ax.set_xlabel("requests applied before the update")
    ax.set_ylabel("update seconds per piece")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    ax.set_title(f"{name}: cost of a sequential update against T")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def conflict_plot(name: str, conflict: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    bins = [i / 20 for i in range(-20, 21)]
    for label in ("in_profile", "out_profile"):
        h = conflict[label]
        ax.hist(h["cosines"], bins=bins, alpha=0.55,
                label=f"{label.replace('_', '-')} (mean {h['mean']:.2f}, "
                      f"{100 * h['share_nonpositive']:.0f}% <= 0)")
    ax.axvline(0, color="k", lw=0.8)
    warm = conflict.get("warmup_steps")
    ax.set_xlabel("cos(grad edit, grad unlearn) on a fresh LoRA memory" if warm is None else
                  f"cos(grad edit, grad unlearn) after {warm} warm-up steps")
    ax.set_ylabel("piece pairs")
    ax.set_title(f"{name}: edit/unlearn gradient conflict")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def density_plot(name: str, density: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    pts = density["points"]
    xs = list(range(len(pts)))
    labels = ["all" if p["capacity"] >= 10_000 else str(p["capacity"]) for p in pts]
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for metric, title in SEQ_METRICS:
        ax.plot(xs, [_nan(p["metrics"].get(metric)) for p in pts], marker="o", label=title)
    ax.set_xticks(xs, labels)
    ax.set_xlabel("memory capacity (pieces per memory)")
    ax.set_ylim(-0.02, 1.05)
    ax2 = ax.twinx()
    ax2.bar(xs, [p["footprint_bytes"] / 1024 for p in pts], alpha=0.15, color="k")
    ax2.set_ylabel("footprint (KiB, bars)")
    ax.legend(fontsize=8, loc="lower left")
    ax.set_title(f"{name} / {density['setting']}: storage density")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_plots(results: dict[str, Any], out: Path) -> list[Path]:
    """Every figure the results support; returns the files written."""
    written = []
    try:
        _pyplot()
    except ImportError:
        logger.warning("matplotlib is not installed: no plots (pip install '.[bench]')")
        return written
    for name, suite in results["suites"].items():
        for key, fn in (("sequential", sequential_plot), ("conflict", conflict_plot),
                        ("density", density_plot)):
            if key in suite:
                path = out / f"{key}_{name}.png"
                fn(name, suite[key], path)
                written.append(path)
        if "sequential" in suite and any(c.get("batches") for c in suite["sequential"]["curves"]):
            path = out / f"sequential_{name}_update_seconds.png"
            update_cost_plot(name, suite["sequential"], path)
            written.append(path)
    return written
