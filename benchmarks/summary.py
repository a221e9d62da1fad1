"""Benchmark numbers in the docs come from ``results.json`` and nowhere else.

A Markdown file marks a generated block with the results file it comes from::

    <!-- results: benchmarks/results/smollm2/results.json -->
    ...the table, written by ``python -m benchmarks tables``...
    <!-- /results -->

``sync(files)`` rewrites every block from its results file; ``sync(files, check=True)`` only
reports the blocks that differ (a test runs it on README.md and benchmarks/README.md, so the
docs and the committed results can never disagree).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

BLOCK = re.compile(r"(<!-- results: (?P<path>[^ ]+) -->\n)(?P<body>.*?)(<!-- /results -->)",
                   re.S)

# the four quantities the "harmonic mean" combines: edit, unlearn, retain, locality
HMEAN_PARTS = ("edit_rel_acc", "unlearn_eff", "retain_ratio", "locality")

# (metric, header): the compact columns of the docs' tables (all proportions)
COLUMNS = [
    ("edit_rel_acc", "edit rel."), ("edit_gen_acc", "edit gen."),
    ("unlearn_eff", "unlearn eff."), ("unlearn_gen", "unlearn gen."),
    ("retain_ratio", "retain"), ("locality", "locality (greedy)"),
    ("locality_tf", "locality (EasyEdit)"), ("hmean", "h-mean"),
]
TOFU_COLUMNS = [("forget_quality", "forget quality"), ("model_utility", "model utility")]


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def hmean(metrics: dict[str, Any]) -> float | None:
    """Harmonic mean of edit reliability, unlearn efficacy, retain (capped at 1) and locality,
    over those the setting measures; None when it measures none."""
    parts = [min(1.0, float(metrics[k])) for k in HMEAN_PARTS
             if not _missing(metrics.get(k))]
    if not parts:
        return None
    if min(parts) <= 0:
        return 0.0
    return len(parts) / sum(1 / p for p in parts)


def _fmt(v: Any) -> str:
    return "–" if _missing(v) else f"{float(v):.2f}"


def _rows(suite: str, setting: dict[str, Any], columns: list[tuple[str, str]]
          ) -> list[list[str]]:
    rows = []
    idx = [m for m, _ in columns].index("hmean")
    best = max((hmean(a["mean"]) or 0.0 for n, a in setting["methods"].items() if n != "base"),
               default=0.0)
    for name, agg in setting["methods"].items():
        means = dict(agg["mean"], hmean=hmean(agg["mean"]))
        cells = [_fmt(means.get(m)) for m, _ in columns]
        if name != "base" and means["hmean"] is not None and means["hmean"] == best:
            cells[idx] = f"**{cells[idx]}**"  # the best method of the setting
        rows.append([suite, f"`{name}`", *cells, f"{agg['fit_seconds']:.0f}"])
    return rows


def summary(results: dict[str, Any]) -> str:
    """One table of every suite, setting and method of a run (means over its seeds), and the
    command, scale, model and wall time it came from."""
    meta = results.get("meta", {})
    suites = {n: s for n, s in results.get("suites", {}).items() if "settings" in s}
    tofu = any(m in a["mean"] for s in suites.values() for st in s["settings"].values()
               for a in st["methods"].values() for m, _ in TOFU_COLUMNS)
    columns = COLUMNS + (TOFU_COLUMNS if tofu else [])
    header = ["suite", "setting / method", *[h for _, h in columns], "fit s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, suite in suites.items():
        for sname, setting in suite["settings"].items():
            for row in _rows(f"{name} / {sname}", setting, columns):
                lines.append("| " + " | ".join(row) + " |")
    seeds = meta.get("seeds", [])
    minutes = meta.get("seconds")
    # runs recorded before the command moved record it as ``loka bench``: the same CLI, which
    # is now ``python -m benchmarks`` (a command shown in the docs must run as written)
    command = meta.get("command", "?").replace("loka bench ", "python -m benchmarks ", 1)
    head = (f"`{command}`: scale {meta.get('scale', '?')}, "
            f"{len(seeds)} seed(s), "
            f"{'%.1f min' % (minutes / 60) if isinstance(minutes, int | float) else '? min'} "
            f"wall time.")
    seq = _sequential_lines(results)
    failures = results.get("failures") or {}
    tail = [f"Failed parts: {', '.join(sorted(failures))}."] if failures else []
    return "\n".join([head, "", *lines, *seq, *([""] + tail if tail else [])]) + "\n"


SEQ_COLUMNS = [("edit_rel_acc", "edit rel."), ("edit_gen_acc", "edit gen."),
               ("unlearn_eff", "unlearn eff."), ("retain_ratio", "retain"),
               ("locality", "locality (greedy)")]


def _sequential_lines(results: dict[str, Any]) -> list[str]:
    """The sequential protocol: every method at every T, with the seconds of all updates so
    far and the flatness ratio of an update's cost (last against first quarter, s/piece)."""
    header = ["suite", "method", "T", *[h for _, h in SEQ_COLUMNS], "updates s (total)",
              "s/piece last/first"]
    lines: list[str] = []
    for name, suite in results.get("suites", {}).items():
        for curve in (suite.get("sequential") or {}).get("curves", []):
            ratio = (curve.get("flatness") or {}).get("ratio")
            for p in curve["points"]:
                cells = [_fmt(p["metrics"].get(m)) for m, _ in SEQ_COLUMNS]
                lines.append("| " + " | ".join([name, f"`{curve['method']}`", str(p["T"]),
                                                *cells, f"{p['update_seconds']:.0f}",
                                                _fmt(ratio)]) + " |")
    if not lines:
        return []
    batch = next(s["sequential"]["batch"] for s in results["suites"].values()
                 if s.get("sequential"))
    return ["", f"Sequential (updates of {batch} requests; each T evaluated on all T so far):",
            "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header), *lines]


def conflict_summary(results: dict[str, Any]) -> str:
    """The conflict analysis (``python -m benchmarks conflict``): per seed, in- against
    out-profile gradient cosines after the engine's warm-up, and the three tests."""
    meta = results.get("meta", {})
    header = ["seed", "mean cos in / out", "share cos <= 0 in / out", "in - out",
              "KS p", "Mann-Whitney p", "permutation p"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results.get("per_seed", []):
        lines.append(
            f"| {r['seed']} | {r['mean_in_profile']:+.2f} / {r['mean_out_profile']:+.2f} | "
            f"{r['share_nonpositive_in_profile']:.2f} / {r['share_nonpositive_out_profile']:.2f}"
            f" | {r['mean_difference']:+.3f} | {r['ks_p']:.3g} | {r['mann_whitney_p']:.3g} | "
            f"{r['permutation_p']:.3g} |")
    seconds = meta.get("seconds")
    head = (f"`{meta.get('command', '?')}`: {results.get('warmup_steps', '?')} warm-up steps, "
            f"{'%.1f min' % (seconds / 60) if isinstance(seconds, int | float) else '? min'}.")
    return "\n".join([head, "", *lines]) + "\n"


def _render(block_path: str, root: Path) -> str:
    """The block's text for the results file it names: a benchmark run, the conflict analysis
    or the chat probe."""
    path = root / block_path
    if not path.is_file():
        raise FileNotFoundError(f"a results block names {block_path}, which does not exist")
    results = json.loads(path.read_text())
    if "per_seed" in results and "stats" in results:
        return conflict_summary(results)
    if "variants" in results:
        from benchmarks.chat_probe import render

        return render(results)
    return summary(results)


def sync(files: Sequence[Path], root: Path, check: bool = False) -> list[str]:
    """Regenerate every results block of ``files`` (paths in blocks are relative to ``root``).
    Returns ``"file: results path"`` for each block that was (``check``: would be) changed."""
    changed: list[str] = []
    for f in files:
        text = f.read_text()

        def fill(m: re.Match[str], f: Path = f) -> str:
            body = _render(m.group("path"), root)
            if body != m.group("body"):
                changed.append(f"{f.name}: {m.group('path')}")
            return m.group(1) + body + m.group(4)

        new = BLOCK.sub(fill, text)
        if not check and new != text:
            f.write_text(new)
            logger.info("rewrote the results blocks of %s", f)
    return changed
