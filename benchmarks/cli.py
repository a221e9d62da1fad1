"""Command line of the benchmarks: ``python -m benchmarks prepare|run|conflict|serving``.

    python -m benchmarks prepare --suite all --scale small
    python -m benchmarks run --suite all --scale small --out benchmarks/results/small

(The benchmarks are not part of the installed package; run them from a checkout.)
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

SUITE_CHOICES = ("tofu", "zsre", "counterfact", "pku", "all")


def _suites(values: list[str]) -> list[str]:
    from benchmarks.suites import SUITES

    names: list[str] = []
    for v in values:
        for part in v.split(","):
            if part == "all":
                names += list(SUITES)
            elif part in SUITES:
                names.append(part)
            else:
                raise SystemExit(f"error: unknown suite {part!r}; choose from "
                                 f"{', '.join(SUITE_CHOICES)}")
    return list(dict.fromkeys(names))


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path, default=None,
                   help="benchmark data (default: $LOKA_BENCH_DATA or ../shared/data)")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="where base models are cached (default: $LOKA_CACHE_DIR or "
                        "~/.cache/loka)")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--suite", action="append", default=None, metavar="|".join(SUITE_CHOICES),
                   help="suite(s) to use, repeatable or comma-separated (default: all)")
    p.add_argument("--scale", choices=["small", "cpu", "full"], default=None,
                   help="small (default without --model): tiny base models, 2 CPU cores; cpu "
                        "(default with --model): a pretrained model on 2 CPU cores; full: an "
                        "accelerator")
    _data_args(p)


def setup_logging(verbose: bool) -> None:
    """INFO for the benchmarks (through tqdm, so bars stay intact); the engine's per-memory
    convergence warnings only with -v (they are counted in the results)."""

    class _Tqdm(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            tqdm.write(self.format(record), file=sys.stderr)

    handler = _Tqdm()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s",
                                           "%H:%M:%S"))
    bench = logging.getLogger("benchmarks")
    bench.handlers = [handler]
    bench.setLevel(logging.DEBUG if verbose else logging.INFO)
    bench.propagate = False
    if not verbose:
        logging.getLogger("memory_store").setLevel(logging.ERROR)


def cmd_prepare(args: argparse.Namespace) -> int:
    import torch

    from benchmarks.data import DataError, resolve_data_dir
    from benchmarks.prepare import ensure_base_model, ensure_reference_models, read_info
    from benchmarks.suites import build_suite

    setup_logging(getattr(args, "verbose", False))
    torch.set_num_threads(1)
    try:
        data_dir = resolve_data_dir(args.data_dir)
        if args.model is not None:  # TOFU's fine-tune of a pretrained model and its twins
            from benchmarks.finetune import ensure_finetuned

            if _suites(args.suite or ["all"]) != ["tofu"]:
                sys.stderr.write("error: prepare --model fine-tunes on TOFU: use --suite tofu\n")
                return 2
            path = ensure_finetuned(_model(args.model), data_dir, args.authors,
                                    args.scale or "cpu", cache_dir=args.cache_dir,
                                    force=args.force)
            logger.info("tofu: fine-tuned %s; run with --model %s", path, path)
            return 0
        for name in _suites(args.suite or ["all"]):
            suite = build_suite(name, args.scale or "small", data_dir)
            started = time.perf_counter()
            path = ensure_base_model(suite, args.cache_dir, force=args.force)
            k = read_info(path).get("knowledge", {})
            logger.info("%s: %s (%.0f s); greedy accuracy canonical %.3f, paraphrase %s, "
                        "general %.3f", name, path, time.perf_counter() - started,
                        k.get("acc_canonical", float("nan")),
                        f"{k['acc_paraphrase']:.3f}" if "acc_paraphrase" in k else "-",
                        k.get("acc_general", float("nan")))
            for split, ref in ensure_reference_models(suite, args.cache_dir, args.force).items():
                k = read_info(ref).get("knowledge", {})
                logger.info("%s: retain-only reference model of %s: %s; greedy accuracy "
                            "canonical %.3f", name, split, ref,
                            k.get("acc_canonical", float("nan")))
    except DataError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from benchmarks.data import DataError, resolve_data_dir
    from benchmarks.methods import HEADLINE, METHODS, Budget
    from benchmarks.plots import write_plots
    from benchmarks.report import render
    from benchmarks.runner import ANALYSES, RunConfig, run, write_json

    setup_logging(getattr(args, "verbose", False))
    methods = args.methods or list(HEADLINE)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        sys.stderr.write(f"error: unknown method(s) {unknown}; known: {', '.join(METHODS)}\n")
        return 2
    skip = {s for v in (args.skip or []) for s in v.split(",")}
    if skip - set(ANALYSES):
        sys.stderr.write(f"error: --skip takes {', '.join(ANALYSES)}\n")
        return 2
    budget = None
    if args.steps or args.rank:
        from benchmarks.runner import BUDGETS

        base = BUDGETS[args.scale or ("cpu" if args.model else "small")]
        budget = Budget(**{**base.__dict__, **({"steps": args.steps} if args.steps else {}),
                           **({"rank": args.rank} if args.rank else {})})
    try:
        data_dir = resolve_data_dir(args.data_dir)
    except DataError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    model = _model(args.model)
    scale = args.scale or ("cpu" if model is not None else "small")
    out = args.out or Path("benchmarks/results") / scale
    cfg = RunConfig(suites=_suites(args.suite or ["all"]), scale=scale, data_dir=data_dir,
                    out=out, methods=methods, seeds=list(range(args.seeds)),
                    analyses=set(ANALYSES) - skip, model=model, budget=budget,
                    cache_dir=args.cache_dir,
                    command="python -m benchmarks run "
                    + shlex.join(sys.argv[_bench_argv_start():]))
    out.mkdir(parents=True, exist_ok=True)

    def partial(results: dict) -> None:  # what is done so far survives a later failure
        write_json(results, out / "results.json")

    results = run(cfg, jobs=args.jobs, verbose=getattr(args, "verbose", False),
                  on_part=partial)
    write_json(results, out / "results.json")
    (out / "results.md").write_text(render(results))
    plots = write_plots(results, out)
    logger.info("wrote %s, %s and %d plots in %.1f min", out / "results.json",
                out / "results.md", len(plots), results["meta"]["seconds"] / 60)
    if results["failures"]:
        for f in results["failures"]:
            logger.error("failed: %s/%s: %s", f["suite"], f["part"], f["error"])
        return 1
    return 0


def _model(value: str | None) -> Path | None:
    """``--model``: a model directory, or a built-in name (``smollm2``, ``tiny``)."""
    if value is None:
        return None
    if value in ("smollm2", "tiny"):
        from memory_store.models import resolve_model

        return Path(resolve_model(value))
    return Path(value)


def cmd_conflict(args: argparse.Namespace) -> int:
    import torch

    from benchmarks.conflict import run_conflict
    from benchmarks.data import DataError, resolve_data_dir

    setup_logging(getattr(args, "verbose", False))
    torch.set_num_threads(1)
    try:
        data_dir = resolve_data_dir(args.data_dir)
    except DataError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    # "tiny" here is the prepared TOFU base model (it knows the authors), not the built-in one
    model = None if args.model in (None, "tiny") else _model(args.model)
    run_conflict(model, args.out, data_dir, args.cache_dir, list(range(args.seeds)),
                 command="python -m benchmarks " + shlex.join(sys.argv[_bench_argv_start(
                     "conflict") - 1:]))
    return 0


def _bench_argv_start(command: str = "run") -> int:
    """Index in sys.argv just after ``command`` (so the recorded command omits the
    launcher)."""
    try:
        return sys.argv.index(command) + 1
    except ValueError:
        return 1


def _add_commands(sub: argparse._SubParsersAction) -> None:
    from benchmarks.serving import register as register_serving

    register_serving(sub)  # python -m benchmarks serving [--quick]
    p = sub.add_parser("prepare", help="train (or find cached) the base models of the suites")
    _common(p)
    p.add_argument("--force", action="store_true", help="retrain even if cached")
    p.add_argument("--model", default=None,
                   help="--suite tofu only: fine-tune this pretrained model (an HF directory, "
                        "'smollm2' or 'tiny') on TOFU authors 0..N-1, and its retain-only twin")
    p.add_argument("--authors", type=int, default=10,
                   help="with --model: how many TOFU authors to fine-tune on (default 10)")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("run", help="run LOKA and the baselines; write results.json/.md, PNGs")
    _common(p)
    p.add_argument("--model", default=None,
                   help="a pretrained model instead of the prepared base models: an HF model "
                        "directory or 'smollm2' (the built-in model)")
    p.add_argument("--methods", nargs="+", default=None,
                   help="headline methods (default: benchmarks.methods.HEADLINE)")
    p.add_argument("--seeds", type=int, default=3, help="seeds of the headline (default 3)")
    p.add_argument("--skip", action="append", default=None,
                   help="analyses to skip: ablations, density, sequential, conflict")
    p.add_argument("--out", type=Path, default=None,
                   help="output directory (default: benchmarks/results/<scale>)")
    p.add_argument("--steps", type=int, default=None, help="override the budget's steps")
    p.add_argument("--rank", type=int, default=None, help="override the budget's LoRA rank")
    p.add_argument("--jobs", type=int, default=1,
                   help="worker processes (one torch thread each) for the suites' parts "
                        "(default 1)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("conflict", help="the edit/unlearn gradient conflict on TOFU, in- vs "
                       "out-profile (Figure 1): conflict.json/.md and a histogram PNG")
    p.add_argument("--model", default="tiny",
                   help="tiny (default: the prepared small-scale TOFU base model), smollm2 "
                        "(the built-in pretrained model) or an HF model directory")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/conflict"),
                   help="output directory (default: benchmarks/results/conflict)")
    p.add_argument("--seeds", type=int, default=3,
                   help="adapter initialisation seeds 0..N-1 (default 3)")
    _data_args(p)
    p.set_defaults(func=cmd_conflict)

    p = sub.add_parser("tables", help="rewrite (or --check) the docs' results blocks from the "
                                      "committed results.json files")
    p.add_argument("--check", action="store_true",
                   help="change nothing; exit 1 if a block differs from its results")
    p.set_defaults(func=cmd_tables)


DOCS = ("README.md", "benchmarks/README.md")


def cmd_tables(args: argparse.Namespace) -> int:
    from benchmarks.summary import sync

    root = Path(__file__).resolve().parent.parent
    changed = sync([root / f for f in DOCS], root, check=args.check)
    for c in changed:
        logger.info("%s %s", "differs:" if args.check else "rewrote:", c)
    return 1 if (changed and args.check) else 0


def build_parser() -> argparse.ArgumentParser:
    """``python -m benchmarks prepare|run|conflict|serving``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split(
        "\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    _add_commands(parser.add_subparsers(dest="bench_command", required=True))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)
