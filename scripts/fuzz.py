"""Fuzz every operation of LOKA Serve's OpenAPI schema against a server on 127.0.0.1.

Schemathesis turns ``/openapi.json`` into Hypothesis strategies; for every operation this runs
``--examples`` requests that fit the schema (positive), as many that do not (negative) and, for
request bodies, as many positive ones repaired to pass the service's own checks (non-blank
texts, a known model, budgets within the limits) so that they reach the engine; seeded by
``--seed``, mostly with the admin token (so that validation, not auth, answers) and
sometimes with the API token, no token or a wrong one. A finding is a 5xx, a request that takes
longer than ``--timeout-s`` (a hang) or breaks the connection, or an error response not in the
service's ``{"error": {"type", "message"}}`` shape. Every accepted job (202) is cancelled at once,
so fuzzing never trains for long. Afterwards the server must still be ready and generate.

Without ``--url`` a server is started with a fresh store, both tokens and small limits. The
tokens are read from ``LOKA_ADMIN_TOKEN`` / ``LOKA_API_TOKEN`` (never from the command line, never
written to the report). Writes ``<out>.json`` and ``<out>.md``; exits 1 if anything was found.

    .venv/bin/python scripts/fuzz.py --examples 60 --seed 1 --out reports/fuzz
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import secrets
import sys
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from local_server import LocalServer, loopback_url, source_version
from schemathesis import GenerationMode

logger = logging.getLogger("fuzz")

# limits of a server this script starts: small, so that bodies at the limits stay small
SERVER_LIMITS = {
    "LOKA_MAX_BODY_BYTES": str(64 * 1024),
    "LOKA_MAX_PROMPT_CHARS": "500",
    "LOKA_MAX_PROMPT_TOKENS": "128",
    "LOKA_MAX_NEW_TOKENS": "16",
    "LOKA_MAX_PARAPHRASES": "4",
    "LOKA_MAX_PIECES_PER_UPDATE": "6",
    "LOKA_MAX_RETAIN": "8",
    "LOKA_MAX_TRAIN_STEPS": "20",
}
# who sends a request: mostly the admin, so that the request itself is judged
CALLERS = ("admin", "admin", "admin", "api", "none", "wrong")
MAX_FINDINGS = 50


@dataclass
class Finding:
    kind: str  # "server_error" | "hang" | "transport_error" | "error_shape"
    operation: str
    mode: str
    caller: str
    status: int | None
    detail: str
    curl: str


@dataclass
class FuzzReport:
    seed: int
    examples: int
    timeout_s: float
    operations: list[str] = field(default_factory=list)
    requests: int = 0
    by_status: Counter = field(default_factory=Counter)
    by_operation: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    findings: list[Finding] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)  # findings by kind (all, not only kept)
    jobs_cancelled: int = 0
    unsatisfiable: list[str] = field(default_factory=list)
    max_latency_s: float = 0.0
    latencies: list[float] = field(default_factory=list)
    alive_after: bool = False
    duration_s: float = 0.0
    stopped_early: bool = False
    server_log: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.counts and self.alive_after

    def add(self, finding: Finding) -> None:
        self.counts[finding.kind] += 1
        if len(self.findings) < MAX_FINDINGS:
            self.findings.append(finding)

    def to_json(self) -> dict[str, Any]:
        lat = sorted(self.latencies)

        def pct(q: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(q * len(lat)))], 4) if lat else None

        return {
            "ok": self.ok, "seed": self.seed, "examples_per_operation_and_mode": self.examples,
            "timeout_s": self.timeout_s, "operations": self.operations,
            "requests": self.requests, "by_status": dict(sorted(self.by_status.items())),
            "server_errors_5xx": self.counts["server_error"], "hangs": self.counts["hang"],
            "transport_errors": self.counts["transport_error"],
            "error_shape_violations": self.counts["error_shape"],
            "jobs_cancelled": self.jobs_cancelled, "alive_after": self.alive_after,
            "no_cases_possible": self.unsatisfiable,
            "latency_s": {"p50": pct(0.5), "p99": pct(0.99), "max": round(self.max_latency_s, 4)},
            "duration_s": round(self.duration_s, 1), "stopped_early": self.stopped_early,
            "by_operation": {op: dict(sorted(c.items())) for op, c in
                             sorted(self.by_operation.items())},
            "server_log": self.server_log,
            "findings": [asdict(f) for f in self.findings],
            "environment": {"source": source_version(), "python": platform.python_version(),
                            "schemathesis": schemathesis.__version__,
                            "machine": platform.machine(), "cpus": os.cpu_count()},
        }


def _text(value: object, default: str = "Hello") -> str:
    """A short non-blank string (schema-valid strings are often blank, and a few unicode
    characters can already be dozens of tokens)."""
    return value[:16] if isinstance(value, str) and value.strip() else default


def repair(label: str, body: Any, max_tokens: int) -> Any:
    """A schema-valid body made to pass the service's own checks too (non-blank texts, known
    models, token budgets and counts within the limits), so that it reaches the engine with
    whatever unicode, sampling values and seeds the schema allowed."""
    if not isinstance(body, dict):
        return body
    body = dict(body)
    for key in ("max_new_tokens", "max_tokens", "max_completion_tokens"):
        if isinstance(body.get(key), int | float):  # 45430.0 is a valid integer in JSON
            body[key] = min(max(int(body[key]), 1), max_tokens)
    if isinstance(body.get("seed"), int | float):
        body["seed"] = int(body["seed"]) % 2**32
    if "stop" in body and isinstance(body["stop"], list):
        body["stop"] = [_text(s, "\n")[:20] for s in body["stop"][:4]]
    if label in ("POST /v1/generate", "POST /v1/route"):
        body["prompt"] = _text(body.get("prompt"))
        if label == "POST /v1/generate":  # its default (32) may be above a small limit
            body.setdefault("max_new_tokens", max_tokens)
        if "memory" in body:
            body["memory"] = "auto"
    elif label in ("POST /v1/completions", "POST /v1/chat/completions"):
        allowed = {"model", "prompt", "messages", "max_tokens", "max_completion_tokens",
                   "temperature", "top_p", "stop", "seed", "stream", "echo", "user"}
        body = {k: v for k, v in body.items() if k in allowed}
        body["model"] = "loka" if len(str(body.get("model", ""))) % 2 else "base"
        if label == "POST /v1/completions":
            prompt = body.get("prompt")
            body["prompt"] = ([_text(p) for p in prompt[:4]] or ["Hello"]
                              if isinstance(prompt, list) else _text(prompt))
        else:
            messages = [m for m in body.get("messages", []) if isinstance(m, dict)][:4]
            body["messages"] = [{"role": ("user", "assistant", "system")[i % 3],
                                 "content": _text(m.get("content"))}
                                for i, m in enumerate(messages)] or [
                {"role": "user", "content": "Hello"}]
    elif label == "POST /v1/updates":
        for kind in ("edits", "unlearn"):
            body[kind] = [{"prompt": _text(p.get("prompt")), "target": _text(p.get("target")),
                           "paraphrases": [_text(q) for q in p.get("paraphrases", [])[:4]]}
                          for p in body.get(kind, [])[:3] if isinstance(p, dict)]
        if not body["edits"] and not body["unlearn"]:
            body["edits"] = [{"prompt": "Hello", "target": " there"}]
        body["retain"] = [{"prompt": _text(r.get("prompt"))} for r in body.get("retain", [])[:8]
                          if isinstance(r, dict)]
        options = body.get("options") if isinstance(body.get("options"), dict) else {}
        body["options"] = {**options, "steps": 1}
    elif label == "POST /v1/codebook/rollback":
        body["version"] = 0
    return body


def _error_shape(body: bytes) -> str | None:
    """None if ``body`` is ``{"error": {"type": str, "message": str, ...}}``; what is wrong."""
    try:
        data = json.loads(body)
    except ValueError:
        return "not JSON"
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict) or set(data) != {"error"}:
        return "no single 'error' object"
    if not isinstance(error.get("type"), str) or not isinstance(error.get("message"), str):
        return "error.type / error.message missing"
    if not error["message"].strip():
        return "empty message"
    return None


class Fuzzer:
    """Runs the cases of one schema against one server and fills a ``FuzzReport``."""

    def __init__(self, url: str, tokens: dict[str, str | None], report: FuzzReport,
                 budget_s: float, max_tokens: int) -> None:
        self.url = url
        self.max_tokens = max_tokens
        self.tokens = tokens
        self.report = report
        self.deadline = time.monotonic() + budget_s
        self.http = httpx.Client(base_url=url, timeout=30.0)
        self.session = requests.Session()

    def headers(self, caller: str) -> dict[str, str]:
        token = self.tokens.get(caller)
        return {"Authorization": f"Bearer {token}"} if token else {}

    def run_case(self, case: Any, operation: str, mode: str, caller: str) -> None:
        if time.monotonic() > self.deadline:
            self.report.stopped_early = True
            return
        if mode == "repaired":
            case.body = repair(operation, case.body, self.max_tokens)
        report = self.report
        report.requests += 1
        started = time.perf_counter()

        def finding(kind: str, status: int | None, detail: str) -> Finding:
            try:
                curl = case.as_curl_command(base_url=self.url)  # without the token
            except Exception as exc:  # a case that cannot be written as curl
                curl = f"<{type(exc).__name__}>"
            return Finding(kind, operation, mode, caller, status, detail[:500], curl[:2000])

        try:
            response = case.call(base_url=self.url, session=self.session,
                                 headers=self.headers(caller), timeout=report.timeout_s)
        except requests.Timeout:
            report.add(finding("hang", None, f"no answer within {report.timeout_s:g} s"))
            report.by_operation[operation]["timeout"] += 1
            return
        except requests.RequestException as exc:
            report.add(finding("transport_error", None, f"{type(exc).__name__}: {exc}"))
            report.by_operation[operation]["transport_error"] += 1
            return
        elapsed = time.perf_counter() - started
        report.latencies.append(elapsed)
        report.max_latency_s = max(report.max_latency_s, elapsed)
        status = response.status_code
        report.by_status[status] += 1
        report.by_operation[operation][str(status)] += 1
        if status >= 500:
            report.add(finding("server_error", status, response.content[:500].decode(
                "utf-8", "replace")))
        elif status >= 400:
            problem = _error_shape(response.content)
            if problem:
                report.add(finding("error_shape", status, f"{problem}: {response.content[:300]!r}"))
        if status == 202:
            self.cancel(response.content)

    def cancel(self, body: bytes) -> None:
        """Cancel an accepted job at once (it may already have finished)."""
        try:
            job_id = json.loads(body)["id"]
        except (ValueError, KeyError, TypeError):
            return
        if isinstance(job_id, str) and job_id.startswith("job_"):
            r = self.http.delete(f"/v1/jobs/{job_id}", headers=self.headers("admin"))
            if r.status_code in (200, 202):
                self.report.jobs_cancelled += 1

    def fuzz_operation(self, operation: Any, mode: str, run_seed: int) -> None:
        label = operation.label
        generation = GenerationMode.NEGATIVE if mode == "negative" else GenerationMode.POSITIVE
        strategy = operation.as_strategy(generation_mode=generation)

        @seed(run_seed)
        @settings(max_examples=self.report.examples, deadline=None, database=None,
                  phases=[Phase.explicit, Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(case=strategy, caller=st.sampled_from(CALLERS))
        def one(case: Any, caller: str) -> None:
            self.run_case(case, label, mode, caller)

        try:
            one()
        except Unsatisfiable:  # nothing can break this operation's schema (a bare path)
            self.report.unsatisfiable.append(f"{label} ({mode})")

    def alive(self) -> bool:
        """The server is ready and generates within a few seconds."""
        try:
            ready = self.http.get("/ready").status_code == 200
            r = self.http.post("/v1/generate", headers=self.headers("admin"), timeout=30.0,
                               json={"prompt": "The capital of Veltoria is",
                                     "max_new_tokens": 4})
            return ready and r.status_code == 200
        except httpx.HTTPError:
            return False


def fuzz(url: str, tokens: dict[str, str | None], examples: int, run_seed: int,
         timeout_s: float, budget_s: float, max_tokens: int) -> FuzzReport:
    """Fuzz every operation of the server's schema: positive, negative, and (for bodies)
    positive cases repaired to pass the service's own checks."""
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", timeout=30)
    report = FuzzReport(run_seed, examples, timeout_s)
    fuzzer = Fuzzer(url, tokens, report, budget_s, max_tokens)
    started = time.monotonic()
    operations = [r.ok() for r in schema.get_all_operations()]
    operations.sort(key=lambda op: op.label)
    report.operations = [op.label for op in operations]
    for index, operation in enumerate(operations):
        modes = ["positive", "negative"]
        if operation.method.lower() == "post":
            modes.append("repaired")
        for mode in modes:
            before = report.requests
            fuzzer.fuzz_operation(operation, mode, run_seed * 1000 + index)
            logger.info("%-34s %-8s %4d requests", operation.label, mode,
                        report.requests - before)
    report.alive_after = fuzzer.alive()
    report.duration_s = time.monotonic() - started
    return report


def write_markdown(report: dict[str, Any], path: Path) -> None:
    """A readable summary of the report."""
    lines = [
        "# Fuzz run (schemathesis over /openapi.json)", "",
        f"- result: **{'no findings' if report['ok'] else 'FINDINGS'}**",
        f"- seed {report['seed']}, {report['examples_per_operation_and_mode']} examples per "
        f"operation and mode (positive, negative, and repaired positive bodies that reach the "
        f"engine), {len(report['operations'])} operations",
        f"- requests: {report['requests']} in {report['duration_s']} s; latency p50 "
        f"{report['latency_s']['p50']} s, p99 {report['latency_s']['p99']} s, "
        f"max {report['latency_s']['max']} s (timeout {report['timeout_s']} s)",
        f"- 5xx: {report['server_errors_5xx']}, hangs: {report['hangs']}, transport errors: "
        f"{report['transport_errors']}, error-shape violations: "
        f"{report['error_shape_violations']}",
        f"- jobs accepted and cancelled at once: {report['jobs_cancelled']}; server alive and "
        f"generating afterwards: {report['alive_after']}",
        f"- statuses: {', '.join(f'{k}: {v}' for k, v in report['by_status'].items())}",
    ]
    if report["no_cases_possible"]:
        lines.append(f"- no negative case exists for: {', '.join(report['no_cases_possible'])}")
    if report["server_log"]:
        log = report["server_log"]
        lines.append(f"- server log: {log.get('tracebacks', 0)} tracebacks, tokens in log: "
                     f"{log.get('tokens_in_log', False)}")
    lines.append(f"- source {report['environment']['source']}, schemathesis "
                 f"{report['environment']['schemathesis']}")
    lines += ["", "| operation | statuses |", "| --- | --- |"]
    for op, statuses in report["by_operation"].items():
        lines.append(f"| `{op}` | {', '.join(f'{k}: {v}' for k, v in statuses.items())} |")
    if report["findings"]:
        lines += ["", "## Findings", ""]
        for f in report["findings"]:
            lines.append(f"- {f['kind']} {f['status']} `{f['operation']}` ({f['mode']}, "
                         f"{f['caller']}): {f['detail'][:200]}\n  `{f['curl'][:300]}`")
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running server on 127.0.0.1 (default: start one)")
    parser.add_argument("--examples", type=int, default=40,
                        help="examples per operation and mode (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout-s", type=float, default=30.0,
                        help="a request slower than this is a hang (default %(default)s)")
    parser.add_argument("--budget-s", type=float, default=1800.0,
                        help="stop sending after this long (default %(default)s)")
    parser.add_argument("--max-tokens", type=int, default=16,
                        help="the server's LOKA_MAX_NEW_TOKENS, for repaired bodies")
    parser.add_argument("--out", default="reports/fuzz", help="writes OUT.json and OUT.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("hypothesis", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    server = None
    if args.url:
        url = loopback_url(args.url)
        tokens = {"admin": os.environ.get("LOKA_ADMIN_TOKEN"),
                  "api": os.environ.get("LOKA_API_TOKEN")}
    else:
        tokens = {"admin": secrets.token_hex(16), "api": secrets.token_hex(16)}
        server = LocalServer({**SERVER_LIMITS, "LOKA_ADMIN_TOKEN": tokens["admin"],
                              "LOKA_API_TOKEN": tokens["api"]}).start()
        url = server.url
    tokens["none"] = None
    tokens["wrong"] = "not-the-token-" + secrets.token_hex(4)
    try:
        report = fuzz(url, tokens, args.examples, args.seed, args.timeout_s, args.budget_s,
                      args.max_tokens)
        if server is not None:
            log = server.log_text()
            report.server_log = {
                "tracebacks": log.count("Traceback (most recent call last)"),
                "tokens_in_log": any(t and t in log for t in (tokens["admin"], tokens["api"])),
            }
            if report.server_log["tracebacks"] or report.server_log["tokens_in_log"]:
                report.counts["server_log"] += 1
    finally:
        if server is not None:
            server.stop()
    data = report.to_json()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    write_markdown(data, out.with_suffix(".md"))
    logger.info("%d requests, %d 5xx, %d hangs, %d shape violations, alive after: %s -> %s",
                data["requests"], data["server_errors_5xx"], data["hangs"],
                data["error_shape_violations"], data["alive_after"], out.with_suffix(".json"))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
