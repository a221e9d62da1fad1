"""The serving benchmark on a real pretrained model (SmolLM2-135M-Instruct by default).

    python -m benchmarks serving --model smollm2     # writes benchmarks/results/serving_smollm2/

Measures, on one model, in one process (the service on 127.0.0.1, HTTP clients in a child):

- **latency at batch 1**: one request at a time, base (``memory="none"``) and routed
  (``memory="auto"``: in-prefill routing + its memory's LoRA) alternating; per-token latency as
  the engine's decode-step time and as the request's latency / new tokens;
- **throughput at concurrency 16** over HTTP, 16 clients, each prompt routed to its own memory
  (16 memories in flight), base and routed alternating;
- **the same 16-request batch in process**: LOKA (``Loka.generate``, routed) against PEFT's own
  mixed-adapter batching (one ``PeftModel`` holding the 16 adapters, one
  ``generate(..., adapter_names=[...])`` call for the batch: what a PEFT user would write)
  and the base model, same prompts, same adapters (rank, targets, layers: the store's own
  adapter folders, which PEFT loads), same torch threads.

Every request generates exactly ``NEW_TOKENS`` tokens (``ignore_eos``; PEFT: ``min_new_tokens``),
greedy. Memories are synthetic (``memory_store.codebook.synthetic``): serving cost does not
depend on what a memory learned.
"""

from __future__ import annotations

import datetime
import json
import logging
import shlex
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from benchmarks.serving.http import running_service, send
from benchmarks.serving.naive import NaivePeft
from benchmarks.serving.run import _machine
from memory_store import Loka
from memory_store.codebook.synthetic import publish_synthetic
from memory_store.general_prompts import general_prompts
from memory_store.models import resolve_model
from memory_store.serving.batching import GenerationStats
from memory_store.types import GenerationRequest
from service.config import Settings

logger = logging.getLogger(__name__)

N_MEMORIES = 16
CONCURRENCY = 16
NEW_TOKENS = 32
DEFAULT_OUT = Path("benchmarks/results/serving_smollm2")


def _pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _ms(values: Sequence[float]) -> dict[str, float]:
    return {"p50_ms": round(1000 * _pct(values, 0.5), 2),
            "p95_ms": round(1000 * _pct(values, 0.95), 2), "n": len(values)}


def _body(prompt: str, memory: str) -> dict:
    return {"prompt": prompt, "max_new_tokens": NEW_TOKENS, "memory": memory,
            "ignore_eos": True}


def _step_ms(before: GenerationStats, after: GenerationStats) -> float:
    steps = after.decode_steps - before.decode_steps
    return round(1000 * (after.decode_s - before.decode_s) / max(steps, 1), 2)


def _latency(url: str, engine: Loka, prompts: list[str], pairs: int) -> dict:
    """Batch 1, base and routed alternating: per-token latency (decode step) and request
    latency over HTTP."""
    stats = engine.generator.stats
    lat: dict[str, list[float]] = {"none": [], "auto": []}
    step: dict[str, list[float]] = {"none": [], "auto": []}
    for i in range(pairs):
        for memory in ("none", "auto") if i % 2 == 0 else ("auto", "none"):
            before = stats.copy()
            answer = send(url, [[_body(prompts[i % len(prompts)], memory)]]).answers[0]
            assert answer.tokens == NEW_TOKENS, answer
            lat[memory].append(answer.latency)
            step[memory].append(_step_ms(before, stats) / 1000)
    out = {name: {"request": _ms(lat[m]), "decode_step": _ms(step[m]),
                  "per_token_ms": round(1000 * statistics.median(lat[m]) / NEW_TOKENS, 2)}
           for name, m in (("base", "none"), ("loka", "auto"))}
    out["ratio_decode_step"] = round(out["loka"]["decode_step"]["p50_ms"]
                                     / out["base"]["decode_step"]["p50_ms"], 3)
    out["ratio_request"] = round(out["loka"]["request"]["p50_ms"]
                                 / out["base"]["request"]["p50_ms"], 3)
    return out


def _http_throughput(url: str, engine: Loka, prompts: list[str], rounds: int,
                     repeats: int) -> dict:
    """``CONCURRENCY`` closed-loop clients, client w always sending prompt w."""
    stats = engine.generator.stats
    runs: dict[str, list[dict]] = {"none": [], "auto": []}
    for r in range(repeats):
        for memory in ("none", "auto") if r % 2 == 0 else ("auto", "none"):
            before = stats.copy()
            res = send(url, [[_body(prompts[w], memory)] * rounds for w in range(CONCURRENCY)])
            rows = stats.decode_rows - before.decode_rows
            runs[memory].append({
                "tokens_per_s": round(res.tokens_per_s, 1), "tokens": res.tokens,
                "seconds": round(res.seconds, 2), **_ms([a.latency for a in res.answers]),
                "routed_to_a_memory": sum(a.memory_id is not None for a in res.answers),
                "rows_per_step": round(rows / max(stats.decode_steps - before.decode_steps, 1),
                                       2)})
    out = {}
    for name, m in (("base", "none"), ("loka", "auto")):
        ordered = sorted(runs[m], key=lambda x: x["tokens_per_s"])
        out[name] = {**ordered[(len(ordered) - 1) // 2],
                     "all_tokens_per_s": [x["tokens_per_s"] for x in runs[m]]}
    out["ratio"] = round(out["loka"]["tokens_per_s"] / out["base"]["tokens_per_s"], 3)
    return out


def _in_process(engine: Loka, peft: NaivePeft, prompts: list[str], memories: list[str],
                repeats: int) -> dict:
    """The same batch of 16 requests (16 memories): LOKA routed, PEFT mixed-adapter batching,
    the base model; alternating, the median of ``repeats``."""
    def loka(memory: str) -> float:
        reqs = [GenerationRequest(p, NEW_TOKENS, memory=memory, ignore_eos=True)
                for p in prompts]
        t = time.perf_counter()
        results = engine.generate(reqs)
        seconds = time.perf_counter() - t
        assert all(r.completion_tokens == NEW_TOKENS for r in results)
        if memory == "auto":
            assert [r.memory_id for r in results] == memories, "a prompt left its memory"
        return seconds

    def mixed() -> float:
        t = time.perf_counter()
        tokens = peft.generate_mixed(prompts, memories, NEW_TOKENS)
        seconds = time.perf_counter() - t
        assert tokens == NEW_TOKENS * len(prompts)
        return seconds

    systems = {"base": lambda: loka("none"), "loka": lambda: loka("auto"), "peft_mixed": mixed}
    times: dict[str, list[float]] = {k: [] for k in systems}
    for r in range(repeats):
        order = list(systems) if r % 2 == 0 else list(reversed(systems))
        for name in order:
            times[name].append(systems[name]())
    tokens = NEW_TOKENS * len(prompts)
    out = {name: {"seconds_p50": round(statistics.median(ts), 3),
                  "all_seconds": [round(t, 3) for t in ts],
                  "tokens_per_s": round(tokens / statistics.median(ts), 1)}
           for name, ts in times.items()}
    out["ratio_loka_vs_peft_mixed"] = round(out["loka"]["tokens_per_s"]
                                            / out["peft_mixed"]["tokens_per_s"], 3)
    out["ratio_loka_vs_base"] = round(out["loka"]["tokens_per_s"]
                                      / out["base"]["tokens_per_s"], 3)
    return out


def _peft_batch1(peft: NaivePeft, prompts: list[str], memories: list[str], n: int) -> dict:
    times = []
    for i in range(n):
        t = time.perf_counter()
        peft.generate_mixed([prompts[i % len(prompts)]], [memories[i % len(memories)]],
                            NEW_TOKENS)
        times.append(time.perf_counter() - t)
    return {"request": _ms(times),
            "per_token_ms": round(1000 * statistics.median(times) / NEW_TOKENS, 2)}


def measure(model: str, threads: int | None, quick: bool) -> dict:
    """Every measurement on ``model``; the results dictionary."""
    path = Path(resolve_model(model))
    prompts = [p.prompt for p in general_prompts("heldout")
               if p.form == "completion"][:N_MEMORIES]
    pairs, rounds, repeats = (4, 1, 1) if quick else (8, 2, 3)
    with tempfile.TemporaryDirectory(prefix="loka-serving-real-") as tmp:
        store = Path(tmp) / "store"
        loka = Loka.open(store, path, threads=threads)
        params = loka.model.num_parameters()
        published = publish_synthetic(loka, prompts, N_MEMORIES)
        memories = [m for m, _ in published]
        lora = loka.config.lora
        loka.close()
        threads_used = torch.get_num_threads()
        settings = Settings(model=str(path), store_dir=store, threads=threads,
                            max_batch_size=CONCURRENCY, log_level="warning")
        out: dict = {"model": model, "path_name": path.name, "parameters": params,
                     "threads": threads_used, "memories": N_MEMORIES, "new_tokens": NEW_TOKENS,
                     "lora": {"rank": lora.rank, "alpha": lora.alpha}}
        with running_service(settings) as svc:
            engine = svc.state.engine
            routes = engine.route(prompts)
            out["routed_to_own_memory"] = sum(
                r.memory_id == m for r, m in zip(routes, memories, strict=True)) / N_MEMORIES
            send(svc.url, [[_body(p, m)] for p in prompts[:4] for m in ("auto", "none")])
            out["latency_batch1"] = _latency(svc.url, engine, prompts, pairs)
            logger.info("batch 1: %s", out["latency_batch1"])
            out["http_concurrency_16"] = _http_throughput(svc.url, engine, prompts, rounds,
                                                          repeats)
            logger.info("concurrency 16: %s", out["http_concurrency_16"])
            peft = NaivePeft(path, [(m, store / d) for m, d in published])
            peft.generate_mixed(prompts[:2], memories[:2], 2)  # warm-up
            out["peft_layout"] = peft.layout()
            out["batch16_in_process"] = _in_process(engine, peft, prompts, memories,
                                                    repeats)
            logger.info("batch of 16 in process: %s", out["batch16_in_process"])
            out["peft_batch1"] = _peft_batch1(peft, prompts, memories, max(2, pairs // 2))
            del peft
    b1 = out["latency_batch1"]
    out["ratios"] = {
        "routed_vs_base_decode_step_batch1": b1["ratio_decode_step"],
        "routed_vs_base_request_batch1": b1["ratio_request"],
        "loka_vs_base_http_c16": out["http_concurrency_16"]["ratio"],
        "loka_vs_peft_mixed_batch16": out["batch16_in_process"]["ratio_loka_vs_peft_mixed"],
        "loka_http_c16_vs_peft_mixed_batch16": round(
            out["http_concurrency_16"]["loka"]["tokens_per_s"]
            / out["batch16_in_process"]["peft_mixed"]["tokens_per_s"], 3),
        "loka_vs_peft_batch1_per_token": round(
            b1["loka"]["per_token_ms"] / out["peft_batch1"]["per_token_ms"], 3),
    }
    return out


def command(model: str, quick: bool, out: Path, threads: int | None) -> str:
    parts = ["python", "-m", "benchmarks", "serving", "--model", model]
    parts += ["--quick"] if quick else []
    parts += ["--out", str(out)] if out != DEFAULT_OUT else []
    parts += ["--threads", str(threads)] if threads is not None else []
    return shlex.join(parts)


def render(res: dict) -> str:
    """The Markdown report."""
    b1, c16, inp = res["latency_batch1"], res["http_concurrency_16"], res["batch16_in_process"]
    r = res["ratios"]
    lines = [
        f"# Serving on {res['path_name']} ({res['parameters'] / 1e6:.1f}M parameters)",
        "",
        f"Command: `{res['meta']['command']}`",
        "",
        f"{res['meta']['machine']}; torch threads {res['threads']}; {res['meta']['date']}; "
        f"{res['meta']['seconds']:.0f} s in all.",
        "",
        f"{res['memories']} synthetic memories (LoRA rank {res['lora']['rank']}, alpha "
        f"{res['lora']['alpha']:g}; {res['peft_layout']}), each keyed on one held-out general "
        f"prompt; {res['routed_to_own_memory']:.0%} of the prompts route to their own memory. "
        f"Every request generates exactly {res['new_tokens']} tokens (`ignore_eos`), greedy.",
        "",
        "## Ratios",
        "",
        "| comparison | ratio |",
        "|---|---|",
        f"| routed / base, decode step at batch 1 (per-token latency) | "
        f"{r['routed_vs_base_decode_step_batch1']:.3f} |",
        f"| routed / base, whole request at batch 1 (prefill + routing + decode) | "
        f"{r['routed_vs_base_request_batch1']:.3f} |",
        f"| LOKA / base, throughput at concurrency 16 over HTTP | "
        f"{r['loka_vs_base_http_c16']:.3f} |",
        f"| LOKA / PEFT mixed-adapter batching, one batch of 16 in process (throughput) | "
        f"{r['loka_vs_peft_mixed_batch16']:.3f} |",
        f"| LOKA over HTTP at concurrency 16 / PEFT mixed batch of 16 in process | "
        f"{r['loka_http_c16_vs_peft_mixed_batch16']:.3f} |",
        f"| LOKA (HTTP) / PEFT (in process) request latency per token at batch 1 | "
        f"{r['loka_vs_peft_batch1_per_token']:.3f} |",
        "",
        "## Batch 1 (one request at a time, base and routed alternating)",
        "",
        "| system | decode step p50 (ms) | request p50 (ms) | request p95 (ms) | ms per token "
        "(request / tokens) |",
        "|---|---|---|---|---|",
    ]
    for name, label in (("base", "base (`memory: none`)"), ("loka", "LOKA routed (`auto`)")):
        x = b1[name]
        lines.append(f"| {label} | {x['decode_step']['p50_ms']} | {x['request']['p50_ms']} | "
                     f"{x['request']['p95_ms']} | {x['per_token_ms']} |")
    pb = res["peft_batch1"]
    lines.append(f"| PEFT (`adapter_names`, batch of 1, in process) | | "
                 f"{pb['request']['p50_ms']} | {pb['request']['p95_ms']} | "
                 f"{pb['per_token_ms']} |")
    lines += [
        "",
        "## Throughput, 16 requests in flight, 16 different memories",
        "",
        "| system | tokens/s | runs (tokens/s) | request p50 (ms) | rows per step |",
        "|---|---|---|---|---|",
    ]
    for name, label in (("base", "base over HTTP, concurrency 16"),
                        ("loka", "LOKA routed over HTTP, concurrency 16")):
        x = c16[name]
        lines.append(f"| {label} | {x['tokens_per_s']} | {x['all_tokens_per_s']} | "
                     f"{x['p50_ms']} | {x['rows_per_step']} |")
    for name, label in (("base", "base, one batch of 16 in process"),
                        ("loka", "LOKA routed, one batch of 16 in process (`Loka.generate`)"),
                        ("peft_mixed", "PEFT mixed-adapter batching, one batch of 16 "
                                       "(`generate(adapter_names=...)`)")):
        x = inp[name]
        lines.append(f"| {label} | {x['tokens_per_s']} | seconds {x['all_seconds']} | | |")
    lines += ["", "![throughput](throughput.png)", "", "## Notes", ""] + res["meta"]["notes"]
    return "\n".join(lines) + "\n"


NOTES = [
    "- The machine is shared (2 cores, other jobs running, load average in the header): "
    "absolute numbers are noisy; ratios come from runs that alternate the systems.",
    "- PEFT mixed batching: one `PeftModel` with the 16 adapters loaded once (the store's "
    "adapter folders: same rank, target modules and layers as LOKA serves), one left-padded "
    "`generate(..., adapter_names=[...], min_new_tokens=max_new_tokens=32)` call per batch. "
    "It is told each row's memory (no routing), runs in process (no HTTP): both favour it.",
    "- LOKA in process: `Loka.generate` of the same 16 requests with `memory=\"auto\"` "
    "(each row routed inside the prefill to its own memory, asserted).",
]


def plot(res: dict, out: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c16, inp = res["http_concurrency_16"], res["batch16_in_process"]
    labels = ["base\nHTTP c16", "LOKA\nHTTP c16", "base\nbatch 16", "LOKA\nbatch 16",
              "PEFT mixed\nbatch 16"]
    values = [c16["base"]["tokens_per_s"], c16["loka"]["tokens_per_s"],
              inp["base"]["tokens_per_s"], inp["loka"]["tokens_per_s"],
              inp["peft_mixed"]["tokens_per_s"]]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.bar(labels, values, color=["#999", "#2a7", "#999", "#2a7", "#c63"])
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:.0f}", ha="center", va="bottom")
    ax.set_ylabel("tokens / s")
    ax.set_title(f"{res['path_name']}: 16 requests, 16 memories, {res['new_tokens']} tokens each")
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=110)
    plt.close(fig)
    return "throughput.png"


def run_and_write(model: str, quick: bool, out: Path, threads: int | None) -> int:
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "faiss.loader", "memory_store.engine"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    started = time.perf_counter()
    machine = _machine()
    res = measure(model, threads, quick)
    res["meta"] = {"command": command(model, quick, out, threads), "machine": machine,
                   "date": datetime.date.today().isoformat(),
                   "seconds": round(time.perf_counter() - started, 1), "quick": quick,
                   "notes": NOTES}
    out.mkdir(parents=True, exist_ok=True)
    res["plots"] = [plot(res, out)]
    (out / "results.json").write_text(json.dumps(res, indent=2))
    (out / "results.md").write_text(render(res))
    logger.info("wrote %s", out / "results.md")
    return 0
