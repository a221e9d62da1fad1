"""Load on 127.0.0.1: N concurrent clients generate while update jobs publish new versions.

Starts a LOKA Serve process on a free loopback port with a fresh store (or targets ``--url``,
which must be a loopback address), then runs for ``--duration-s`` seconds or ``--max-requests``
requests, whichever comes first:

* ``--clients`` threads, each with its own connection, generate greedily in a loop over prompts
  that the updates change and prompts they do not (a share of them streamed through
  ``/v1/completions``), recording status, latency and the codebook version of every answer;
* one thread submits ``--updates`` edit jobs one after the other (and a rollback at the end),
  waiting for each, so that versions are published while the clients generate;
* one thread samples the server process's resident memory (``VmRSS`` from ``/proc``).

Reports the error rate (any non-200, transport error or error event), latency percentiles,
throughput, versions served, job durations and the memory over time, and judges whether memory
stayed bounded (growth over the second half of the run below ``--max-growth-mb``). Writes
``<out>.json`` and ``<out>.md``; exits 1 if any request failed or memory kept growing.

    .venv/bin/python scripts/load_test.py --clients 8 --duration-s 120 --out reports/load
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from local_server import LocalServer, loopback_url, rss_bytes, source_version

from memory_store.models.builtin import FACTS, counterfactual_answer

logger = logging.getLogger("load")

MB = 1024 * 1024


@dataclass
class Sample:
    t: float  # seconds since the start of the run
    latency_s: float
    ok: bool
    status: int
    version: int | None
    stream: bool
    error: str = ""


@dataclass
class Run:
    started: float = field(default_factory=time.monotonic)
    samples: list[Sample] = field(default_factory=list)
    rss: list[tuple[float, int]] = field(default_factory=list)
    jobs: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)

    def now(self) -> float:
        return time.monotonic() - self.started

    def add(self, sample: Sample, max_requests: int) -> None:
        with self.lock:
            self.samples.append(sample)
            if len(self.samples) >= max_requests:
                self.stop.set()


def generate_once(client: httpx.Client, prompt: str, stream: bool, max_new_tokens: int
                  ) -> tuple[int, int | None, str]:
    """One greedy generation: (HTTP status or 0, codebook version, error text)."""
    if not stream:
        r = client.post("/v1/generate", json={"prompt": prompt, "max_new_tokens": max_new_tokens})
        if r.status_code != 200:
            return r.status_code, None, r.text[:200]
        return 200, r.json()["codebook_version"], ""
    body = {"model": "loka", "prompt": prompt, "max_tokens": max_new_tokens, "temperature": 0,
            "stream": True}
    version = None
    with client.stream("POST", "/v1/completions", json=body) as r:
        if r.status_code != 200:
            return r.status_code, None, r.read()[:200].decode("utf-8", "replace")
        for line in r.iter_lines():
            if line.startswith("data: {"):
                event = json.loads(line[6:])
                if "error" in event:
                    return 200, None, line[:200]
                choice = event["choices"][0]
                if "loka" in choice:
                    version = choice["loka"]["codebook_version"]
    return 200, version, "" if version is not None else "stream ended without a result"


def client_loop(url: str, index: int, run: Run, prompts: list[str], args: argparse.Namespace,
                token: str | None) -> None:
    """Generate until the run stops; every ``stream_every``-th request is streamed."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    stream_every = max(1, round(1 / args.stream_fraction)) if args.stream_fraction > 0 else 0
    with httpx.Client(base_url=url, timeout=args.timeout_s, headers=headers) as client:
        i = index
        while not run.stop.is_set():
            prompt = prompts[i % len(prompts)]
            stream = bool(stream_every) and i % stream_every == 0
            start = time.perf_counter()
            try:
                status, version, error = generate_once(client, prompt, stream,
                                                       args.max_new_tokens)
            except httpx.HTTPError as exc:
                status, version, error = 0, None, f"{type(exc).__name__}: {exc}"
            latency = time.perf_counter() - start
            ok = status == 200 and not error
            run.add(Sample(run.now() - latency, latency, ok, status, version, stream, error),
                    args.max_requests)
            i += args.clients


def update_loop(url: str, run: Run, args: argparse.Namespace, token: str | None) -> None:
    """Submit the edit jobs one after the other, then roll back to version 1."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(base_url=url, timeout=60.0, headers=headers) as client:
        time.sleep(args.update_delay_s)
        for n in range(args.updates):
            if run.stop.is_set():
                return
            fact = FACTS[(n * 7) % len(FACTS)]
            body = {"edits": [{"prompt": fact.prompt, "target": " " + counterfactual_answer(fact),
                               "paraphrases": list(fact.prompts[1:2])}],
                    "options": {"steps": args.update_steps}}
            submitted = run.now()
            r = client.post("/v1/updates", json=body)
            if r.status_code != 202:
                run.jobs.append({"submitted_s": submitted, "status": f"HTTP {r.status_code}",
                                 "error": r.text[:200]})
                continue
            job_id = r.json()["id"]
            while not run.stop.is_set():
                job = client.get(f"/v1/jobs/{job_id}").json()
                if job["status"] in ("succeeded", "failed", "cancelled"):
                    break
                time.sleep(0.2)
            else:
                run.jobs.append({"submitted_s": submitted, "status": "unfinished at the end"})
                return
            run.jobs.append({"submitted_s": round(submitted, 2),
                             "finished_s": round(run.now(), 2), "status": job["status"],
                             "version": (job["result"] or {}).get("codebook_version"),
                             "error": job["error"]})
            time.sleep(args.update_gap_s)
        if args.updates > 1 and not run.stop.is_set():
            r = client.post("/v1/codebook/rollback", json={"version": 1})
            run.jobs.append({"submitted_s": round(run.now(), 2), "status": "rollback "
                             f"HTTP {r.status_code}", "version": r.json().get("codebook_version")})


def rss_loop(pid: int, run: Run, every_s: float) -> None:
    while not run.stop.is_set():
        value = rss_bytes(pid)
        if value is not None:
            run.rss.append((round(run.now(), 2), value))
        run.stop.wait(every_s)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def memory_summary(rss: list[tuple[float, int]], warmup_s: float, max_growth_mb: float
                   ) -> dict[str, Any]:
    """Start (after warm-up), peak, end, and the growth over the second half of the run."""
    if len(rss) < 4:
        return {"measured": False}
    steady = [(t, v) for t, v in rss if t >= warmup_s] or rss
    half = steady[len(steady) // 2:]
    growth_second_half = (max(v for _, v in half) - half[0][1]) / MB
    times = [t for t, _ in half]
    slope = (statistics.linear_regression(times, [v / MB for _, v in half]).slope * 60
             if len(set(times)) > 1 else 0.0)
    return {
        "measured": True,
        "start_mb": round(steady[0][1] / MB, 1), "peak_mb": round(max(v for _, v in rss) / MB, 1),
        "end_mb": round(rss[-1][1] / MB, 1),
        "growth_second_half_mb": round(growth_second_half, 1),
        "slope_second_half_mb_per_min": round(slope, 2),
        "bounded": growth_second_half < max_growth_mb,
        "max_growth_mb": max_growth_mb,
    }


def summarise(run: Run, args: argparse.Namespace, duration: float) -> dict[str, Any]:
    samples = run.samples
    latencies = [s.latency_s for s in samples if s.ok]
    errors = [s for s in samples if not s.ok]
    versions: dict[int, int] = {}
    for s in samples:
        if s.version is not None:
            versions[s.version] = versions.get(s.version, 0) + 1
    during = [s.latency_s for s in samples if s.ok and any(
        j.get("submitted_s", 1e9) <= s.t <= j.get("finished_s", -1) for j in run.jobs)]

    def pct(values: list[float]) -> dict[str, float | None]:
        return {k: (round(v, 4) if v is not None else None) for k, v in (
            ("p50", percentile(values, 0.50)), ("p95", percentile(values, 0.95)),
            ("p99", percentile(values, 0.99)), ("max", max(values) if values else None))}

    memory = memory_summary(run.rss, args.warmup_s, args.max_growth_mb)
    return {
        "ok": not errors and memory.get("bounded", True),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out",)},
        "duration_s": round(duration, 1),
        "requests": len(samples),
        "streamed": sum(s.stream for s in samples),
        "errors": len(errors),
        "error_rate": round(len(errors) / len(samples), 6) if samples else None,
        "error_examples": [{"t": round(e.t, 2), "status": e.status, "error": e.error}
                           for e in errors[:10]],
        "throughput_rps": round(len(samples) / duration, 2) if duration else None,
        "latency_s": pct(latencies),
        "latency_during_jobs_s": pct(during),
        "versions_served": dict(sorted(versions.items())),
        "jobs": run.jobs,
        "memory": memory,
        "rss_mb_over_time": [(t, round(v / MB, 1)) for t, v in run.rss],
        "environment": {"source": source_version(), "python": platform.python_version(),
                        "machine": platform.machine(), "cpus": os.cpu_count(),
                        "loadavg_at_end": os.getloadavg()},
    }


def write_markdown(report: dict[str, Any], path: Path) -> None:
    s, lat, mem = report["settings"], report["latency_s"], report["memory"]
    during = report["latency_during_jobs_s"]
    lines = [
        "# Load test (127.0.0.1)", "",
        f"- result: **{'pass' if report['ok'] else 'FAIL'}**",
        f"- {s['clients']} concurrent clients, greedy, {s['max_new_tokens']} new tokens, "
        f"{round(100 * s['stream_fraction'])}% streamed; {report['duration_s']} s, "
        f"{report['requests']} requests ({report['throughput_rps']} req/s)",
        f"- errors: {report['errors']} (error rate {report['error_rate']})",
        f"- latency: p50 {lat['p50']} s, p95 {lat['p95']} s, **p99 {lat['p99']} s**, "
        f"max {lat['max']} s",
        f"- latency while a job trained or published: p50 {during['p50']} s, p99 {during['p99']} s",
        f"- versions served (answers per version): {report['versions_served']}",
    ]
    if mem.get("measured"):
        lines.append(
            f"- server RSS: {mem['start_mb']} MB after warm-up, peak {mem['peak_mb']} MB, end "
            f"{mem['end_mb']} MB; growth over the second half {mem['growth_second_half_mb']} MB "
            f"(slope {mem['slope_second_half_mb_per_min']} MB/min) -> "
            f"{'bounded' if mem['bounded'] else 'GROWING'} (limit {mem['max_growth_mb']} MB)")
    lines += ["", "| job | submitted (s) | finished (s) | status | version |",
              "| --- | --- | --- | --- | --- |"]
    for i, job in enumerate(report["jobs"], 1):
        lines.append(f"| {i} | {job.get('submitted_s')} | {job.get('finished_s', '')} | "
                     f"{job['status']} | {job.get('version', '')} |")
    rss = report["rss_mb_over_time"]
    if rss:
        step = max(1, len(rss) // 12)
        lines += ["", "| t (s) | RSS (MB) |", "| --- | --- |"]
        lines += [f"| {t} | {v} |" for t, v in rss[::step]]
    if report["error_examples"]:
        lines += ["", "## Errors", ""] + [f"- {e}" for e in report["error_examples"]]
    env = report["environment"]
    lines += ["", f"Source {env['source']}; {env['cpus']} CPUs, load average at the end "
              f"{[round(x, 2) for x in env['loadavg_at_end']]}."]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running server on 127.0.0.1 (default: start one)")
    parser.add_argument("--pid", type=int, help="the --url server's pid, for its memory")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration-s", type=float, default=120.0)
    parser.add_argument("--max-requests", type=int, default=20_000)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--stream-fraction", type=float, default=0.25)
    parser.add_argument("--updates", type=int, default=4)
    parser.add_argument("--update-steps", type=int, default=60)
    parser.add_argument("--update-delay-s", type=float, default=10.0)
    parser.add_argument("--update-gap-s", type=float, default=10.0)
    parser.add_argument("--timeout-s", type=float, default=60.0)
    parser.add_argument("--sample-s", type=float, default=0.5, help="RSS sampling period")
    parser.add_argument("--warmup-s", type=float, default=5.0)
    parser.add_argument("--max-growth-mb", type=float, default=64.0)
    parser.add_argument("--out", default="reports/load", help="writes OUT.json and OUT.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    server, token = None, os.environ.get("LOKA_ADMIN_TOKEN")
    if args.url:
        url, pid = loopback_url(args.url), args.pid
    else:
        server = LocalServer({"LOKA_MAX_NEW_TOKENS": str(max(64, args.max_new_tokens))}).start()
        url, pid = server.url, server.pid
    prompts = [f.prompt for f in FACTS[: 7 * args.updates: 7]]  # the facts the updates edit
    prompts += [f.prompts[1] for f in FACTS[: 7 * args.updates: 7]]  # their paraphrases
    prompts += [f.prompt for f in FACTS[3::11][:8]]  # facts nobody edits
    prompts += ["The weather today is", "Once upon a time there was"]
    run = Run()
    threads = [threading.Thread(target=client_loop, args=(url, i, run, prompts, args, token),
                                daemon=True) for i in range(args.clients)]
    threads.append(threading.Thread(target=update_loop, args=(url, run, args, token),
                                    daemon=True))
    if pid is not None:
        threads.append(threading.Thread(target=rss_loop, args=(pid, run, args.sample_s),
                                        daemon=True))
    logger.info("%d clients against %s for %.0f s (at most %d requests)", args.clients, url,
                args.duration_s, args.max_requests)
    try:
        for t in threads:
            t.start()
        run.stop.wait(args.duration_s)
        run.stop.set()
        for t in threads:
            t.join(args.timeout_s + 10)
        duration = run.now()
    finally:
        if server is not None:
            server.stop()
    report = summarise(run, args, duration)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(report, out.with_suffix(".md"))
    logger.info("%d requests, %d errors, p99 %s s, memory %s -> %s", report["requests"],
                report["errors"], report["latency_s"]["p99"], report["memory"],
                out.with_suffix(".json"))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
