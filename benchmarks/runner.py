"""``python -m benchmarks run``: every method on every setting of the chosen suites, then the
analyses (ablations, storage density, sequential protocol, conflict histogram);
writes the results."""

from __future__ import annotations

import json
import logging
import math
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import AutoTokenizer

from benchmarks import data as D
from benchmarks.conflict import conflict_histogram
from benchmarks.evaluate import Outputs, base_knowledge, collect, compute_metrics, max_new_tokens
from benchmarks.known import KnownFacts
from benchmarks.methods import ABLATIONS, Budget, Served, get_method
from benchmarks.methods.codebook import MAX_CAPACITY, LokaServed, budget_config, with_fields
from benchmarks.metrics import mean, std
from benchmarks.prepare import INFO_FILE, SPECS, ensure_base_model, model_path, read_info
from benchmarks.protocol import Setting, Suite
from benchmarks.sequential import run_sequential
from benchmarks.suites import build_suite
from benchmarks.tofu_eval import TofuEvaluator

logger = logging.getLogger(__name__)

ANALYSES = ("ablations", "density", "sequential", "conflict")
# storage density: LOKA's capacity from one piece per memory to one memory for everything
DENSITY_CAPACITIES = (1, 2, 4, 8, 16, MAX_CAPACITY)
DENSITY_SETTINGS = {"zsre": "joint", "tofu": "in_profile"}
BUDGETS = {"small": Budget(max_retain=8), "cpu": Budget(max_retain=8), "full": Budget()}


@dataclass
class RunConfig:
    suites: list[str]
    scale: str
    data_dir: Path
    out: Path
    methods: list[str]
    seeds: list[int]
    analyses: set[str] = field(default_factory=lambda: set(ANALYSES))
    model: Path | None = None
    budget: Budget | None = None
    cache_dir: Path | None = None
    command: str = ""

    def resolved_budget(self) -> Budget:
        return self.budget or BUDGETS[self.scale]


class SuiteRun:
    """One suite: its base model, the base model's outputs, and every fit."""

    def __init__(self, cfg: RunConfig, suite: Suite, model_dir: Path, workroot: Path) -> None:
        self.cfg = cfg
        self.suite = suite
        self.model_dir = model_dir
        self.budget = cfg.resolved_budget()
        self.workroot = workroot
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self.base: dict[str, Outputs] = {}
        self.runs: dict[tuple[str, str, int], dict[str, Any]] = {}
        # TOFU: forget quality (against a retain-only reference model) and model utility
        self.tofu = (TofuEvaluator(suite, model_dir, cfg.model is not None, self.budget,
                                   workroot, self.tokenizer, cfg.cache_dir)
                     if suite.tofu is not None else None)

    def base_outputs(self, setting: Setting) -> Outputs:
        if setting.key not in self.base:
            served = get_method("base")(self.model_dir, [], (), self.budget, 0, self.workroot)
            self.base[setting.key] = collect(served, setting, self._tokens(setting))
            served.close()
        return self.base[setting.key]

    def _tokens(self, setting: Setting) -> int:
        return max_new_tokens(setting, self.tokenizer)

    def fit(self, setting: Setting, method: str, seed: int,
            make: Callable[[Path], Served] | None = None) -> dict[str, Any]:
        """Fit ``method`` on ``setting`` (or ``make`` a served model), evaluate, record."""
        key = (setting.key, method, seed)
        if key in self.runs:
            return self.runs[key]
        base = self.base_outputs(setting)
        with tempfile.TemporaryDirectory(dir=self.workroot, prefix=f"{method}-") as tmp:
            started = time.perf_counter()
            if make is None:
                served = get_method(method)(self.model_dir, setting.pieces(),
                                            setting.retain_train, self.budget, seed, Path(tmp))
            else:
                served = make(Path(tmp))
            fit_s = time.perf_counter() - started
            try:
                t0 = time.perf_counter()
                out = collect(served, setting, self._tokens(setting))
                metrics = compute_metrics(setting, out, base, self.tokenizer)
                if self.tofu is not None:
                    metrics.update(self.tofu.metrics(setting, served, out,
                                                     self._tokens(setting)))
                record = {"seed": seed, "metrics": metrics, "fit_seconds": round(fit_s, 2),
                          "eval_seconds": round(time.perf_counter() - t0, 2),
                          "optimiser_steps": served.last_update.optimiser_steps,
                          "steps_per_piece": served.last_update.steps_per_piece,
                          "footprint_bytes": served.footprint_bytes(), "info": served.info()}
            finally:
                served.close()
        self.runs[key] = record
        return record

    def density_fit(self, setting: Setting, capacity: int) -> dict[str, Any]:
        """LOKA with ``capacity`` (seed 0); reuses the runs that are the same configuration."""
        same = {1: "loka_per_piece", self.budget.batch_pieces: "loka", MAX_CAPACITY: "loka_dense"}
        seed = self.cfg.seeds[0]
        if capacity in same and (setting.key, same[capacity], seed) in self.runs:
            return self.runs[(setting.key, same[capacity], seed)]
        config = with_fields(budget_config(self.budget, seed), mapping={"capacity": capacity})

        def make(workdir: Path) -> Served:
            served = LokaServed(f"loka_c{capacity}", self.model_dir, config, self.budget,
                                workdir)
            served.update(setting.pieces(), setting.retain_train)
            return served

        return self.fit(setting, f"loka_capacity_{capacity}", seed, make)


def _aggregate(records: list[dict[str, Any]]) -> dict[str, Any]:
    names = sorted({k for r in records for k in r["metrics"]})
    return {
        "mean": {k: mean([r["metrics"].get(k, float("nan")) for r in records]) for k in names},
        "std": {k: std([r["metrics"].get(k, float("nan")) for r in records]) for k in names},
        "fit_seconds": mean([r["fit_seconds"] for r in records]),
        "footprint_bytes": mean([r["footprint_bytes"] for r in records]),
    }


def _model_dir(cfg: RunConfig, suite: Suite) -> tuple[Path, dict[str, Any], float]:
    """The suite's base model (prepared if not cached), its description, and the seconds
    spent getting it (including any wait for another part's build of the same model)."""
    started = time.perf_counter()
    if cfg.model is not None:
        return cfg.model, {"path": str(cfg.model), "prepared": False,
                           "n_params": _n_params(cfg.model)}, 0.0
    cached = (model_path(suite, SPECS[suite.scale][suite.name], cfg.cache_dir)
              / INFO_FILE).is_file()
    path = ensure_base_model(suite, cfg.cache_dir)
    info = {"path": str(path), "prepared": True, "built_in_run": not cached, **read_info(path)}
    return path, info, round(time.perf_counter() - started, 1)


def _n_params(model_dir: Path) -> int | None:
    """Parameters of a safetensors model folder, read from the file headers (no weights
    loaded); None if it has none."""
    from safetensors import safe_open

    total, files = 0, sorted(model_dir.glob("*.safetensors"))
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():  # noqa: SIM118 (safe_open has no __iter__)
                total += math.prod(st.get_slice(name).get_shape())
    return total if files else None


def _build(cfg: RunConfig, name: str) -> Suite:
    """Suite ``name``; on a given (pretrained) model its unlearn and retain facts are ones that
    model reproduces."""
    if cfg.model is None:
        return build_suite(name, cfg.scale, cfg.data_dir)
    known = KnownFacts(cfg.model, cfg.cache_dir)
    try:
        return build_suite(name, cfg.scale, cfg.data_dir, known.mask)
    finally:
        known.close()


def run_main(cfg: RunConfig, name: str, workroot: Path) -> dict[str, Any]:
    """One suite's headline, ablations, density and conflict analyses; its part of
    ``results.json`` (the sequential protocol is a separate part: :func:`run_sequential_part`)."""
    suite_started = time.perf_counter()
    suite = _build(cfg, name)
    model_dir, model_info, prepare_s = _model_dir(cfg, suite)
    run = SuiteRun(cfg, suite, model_dir, workroot)
    result: dict[str, Any] = {"sizes": suite.sizes, "model": model_info,
                              "prepare_seconds": prepare_s,
                              "data_sha256": D.data_hashes(cfg.data_dir, name), "settings": {}}
    jobs: list[tuple[Setting, str, int]] = [(s, m, seed) for s in suite.settings
                                            for m in cfg.methods for seed in cfg.seeds]
    if "ablations" in cfg.analyses:
        jobs += [(s, m, cfg.seeds[0]) for s in suite.settings for m in ABLATIONS]
    for setting, method, seed in tqdm(jobs, desc=f"{name} fits", unit="fit"):
        rec = run.fit(setting, method, seed)
        logger.info("%s %s seed %d: fit %.1fs edit %.2f unlearn %.2f retain %.2f locality %.2f",
                    setting.key, method, seed, rec["fit_seconds"],
                    rec["metrics"]["edit_rel_acc"], rec["metrics"]["unlearn_eff"],
                    rec["metrics"]["retain_ratio"], rec["metrics"]["locality"])
    for setting in suite.settings:
        entry: dict[str, Any] = {
            "description": setting.description,
            "base_knowledge": base_knowledge(setting, run.base_outputs(setting)),
            "methods": {}, "ablations": {}}
        for m in cfg.methods:
            records = [run.runs[(setting.key, m, s)] for s in cfg.seeds]
            entry["methods"][m] = {"runs": records, **_aggregate(records)}
        if "ablations" in cfg.analyses:
            for m in ABLATIONS:
                records = [run.runs[(setting.key, m, cfg.seeds[0])]]
                entry["ablations"][m] = {"runs": records, **_aggregate(records)}
        result["settings"][setting.name] = entry
    if run.tofu is not None:
        result["tofu"] = run.tofu.summary(max(run._tokens(s) for s in suite.settings))
    if "density" in cfg.analyses and name in DENSITY_SETTINGS:
        setting = suite.setting(DENSITY_SETTINGS[name])
        points = []
        for c in tqdm(DENSITY_CAPACITIES, desc=f"{name} density", unit="fit"):
            rec = run.density_fit(setting, c)
            points.append({"capacity": c, **rec})
        result["density"] = {"setting": setting.name, "seed": cfg.seeds[0], "points": points}
    if "conflict" in cfg.analyses and suite.conflict_pair is not None:
        a, b = suite.conflict_pair
        hist = conflict_histogram(model_dir, suite.setting(a), suite.setting(b), run.budget,
                                  cfg.seeds[0])
        hist["loka_decisions"] = {
            s: [d for r in result["settings"][s]["methods"].get("loka", {}).get("runs", [])
                for d in r["info"].get("decisions", [])] for s in (a, b)}
        result["conflict"] = hist
    result["seconds"] = round(time.perf_counter() - suite_started, 1)
    return result


def run_sequential_part(cfg: RunConfig, name: str, workroot: Path) -> dict[str, Any] | None:
    """The sequential protocol of one suite (None if the suite has none at this scale)."""
    started = time.perf_counter()
    suite = _build(cfg, name)
    if suite.sequential is None:
        return None
    model_dir, model_info, prepare_s = _model_dir(cfg, suite)
    run = SuiteRun(cfg, suite, model_dir, workroot)
    seq = suite.sequential
    base = run.base_outputs(seq.setting)
    methods = [m for m in cfg.methods if m != "base"]
    curves = [run_sequential(m, seq, model_dir, base, run.tokenizer, run.budget, cfg.seeds[0],
                             workroot)
              for m in tqdm(methods, desc=f"{name} sequential", unit="method")]
    return {"batch": seq.batch, "checkpoints": list(seq.checkpoints), "seed": cfg.seeds[0],
            "curves": curves, "prepare_seconds": prepare_s,
            "model_built_in_run": bool(model_info.get("built_in_run")),
            "seconds": round(time.perf_counter() - started, 1)}


def _part(cfg: RunConfig, name: str, part: str, verbose: bool | None = None
          ) -> tuple[str, str, Any]:
    """One unit of work (in this process or a worker): ``part`` is "main" or "sequential"."""
    if verbose is not None:  # a fresh worker process: set up its logging and threads
        from benchmarks.cli import setup_logging

        setup_logging(verbose)
    torch.set_num_threads(1)  # small models: one thread is faster on a shared CPU
    with tempfile.TemporaryDirectory(prefix="loka-bench-") as workroot:
        if part == "main":
            return name, part, run_main(cfg, name, Path(workroot))
        return name, part, run_sequential_part(cfg, name, Path(workroot))


def _parts(cfg: RunConfig) -> list[tuple[str, str]]:
    parts = [(n, "main") for n in cfg.suites]
    if "sequential" in cfg.analyses:
        parts += [(n, "sequential") for n in cfg.suites]
    return parts


def _merge(results: dict[str, Any], pending: dict[str, Any], name: str, part: str,
           value: Any) -> None:
    """Put one finished part into ``results``; a sequential part waits in ``pending`` until
    its suite's main part is there (or stands alone if that part failed)."""
    suites = results["suites"]
    if part == "main":
        suites[name] = value
    elif value is not None:
        pending[name] = value
    if name in pending and name in suites:
        seq = pending.pop(name)
        main = suites[name]
        main["sequential"] = seq
        # whichever part found the model missing built it (the other waited for it)
        main["prepare_seconds"] = max(main["prepare_seconds"], seq["prepare_seconds"])
        main["model"]["built_in_run"] = (main["model"].get("built_in_run", False)
                                         or seq["model_built_in_run"])


def run(cfg: RunConfig, jobs: int = 1, verbose: bool = False,
        on_part: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run the benchmark described by ``cfg``; returns the ``results.json`` content.

    With ``jobs`` > 1 the parts (each suite's main part, each sequential protocol) run in that
    many worker processes, one torch thread each; a part prepares its base model if it is not
    cached (a file lock makes a second part wait for the first's build).

    A part that fails is logged at once and listed in ``failures`` (suite, part, error); the
    others go on. ``on_part(results)`` is called after every finished or failed part, so the
    caller can write what is done so far."""
    started = time.perf_counter()
    torch.set_num_threads(1)
    results: dict[str, Any] = {
        "meta": {"command": cfg.command, "scale": cfg.scale, "suites": cfg.suites,
                 "methods": cfg.methods, "ablations": list(ABLATIONS)
                 if "ablations" in cfg.analyses else [], "seeds": cfg.seeds,
                 "analyses": sorted(cfg.analyses), "budget": asdict(cfg.resolved_budget()),
                 "jobs": jobs, "data_dir": str(cfg.data_dir), "python": sys.version.split()[0],
                 "torch": torch.__version__, "platform": platform.platform(),
                 "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
        "suites": {},
        "failures": [],
    }
    pending: dict[str, Any] = {}

    def finished(name: str, part: str, value: Any = None, error: BaseException | None = None
                 ) -> None:
        if error is not None:
            logger.error("part %s/%s FAILED: %s: %s (the other parts go on)", name, part,
                         type(error).__name__, error)
            results["failures"].append({"suite": name, "part": part,
                                        "error": f"{type(error).__name__}: {error}"})
        else:
            _merge(results, pending, name, part, value)
            logger.info("part %s/%s done", name, part)
        results["meta"]["seconds"] = round(time.perf_counter() - started, 1)
        if on_part is not None:
            on_part(results)

    parts = _parts(cfg)
    if jobs <= 1:
        for n, p in parts:
            try:
                value = _part(cfg, n, p)[2]
            except Exception as exc:  # noqa: BLE001 - reported, the run goes on
                logger.debug("part %s/%s", n, p, exc_info=True)
                finished(n, p, error=exc)
            else:
                finished(n, p, value)
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        # the longest parts first, so that the last worker is not left with a long one
        order = sorted(parts, key=lambda np_: (np_[1] != "sequential", np_[0] != "tofu"))
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            futures = {pool.submit(_part, cfg, n, p, verbose): (n, p) for n, p in order}
            for f in as_completed(futures):
                n, p = futures[f]
                try:
                    value = f.result()[2]
                except Exception as exc:  # noqa: BLE001 - reported, the run goes on
                    finished(n, p, error=exc)
                else:
                    finished(n, p, value)
    for name, seq in pending.items():  # its main part failed: keep the sequential result
        results["suites"][name] = {"sequential": seq}
    results["suites"] = {n: results["suites"][n] for n in cfg.suites if n in results["suites"]}
    results["meta"]["seconds"] = round(time.perf_counter() - started, 1)
    return results


def _clean(value: Any) -> Any:
    """NaN (a metric that does not apply) -> null, so the file is strict JSON."""
    if isinstance(value, float):
        return None if value != value else round(value, 6)
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def write_json(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_clean(results), indent=1, allow_nan=False) + "\n")
