"""``loka-client``: the command line of LOKA Serve.

Results are printed as JSON on stdout; errors go to stderr. Exit codes: 0 success, 1 the server
refused or failed (or a waited-for job failed), 2 bad usage or a bad input file.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

from loka_client.client import Client
from loka_client.errors import JobFailed, JobTimeout, LokaClientError
from loka_client.models import Edit, Job, Retain, Unlearn

logger = logging.getLogger(__name__)

EXIT_ERROR = 1
EXIT_USAGE = 2
# steps are polled, not counted as they happen, so a rate would be meaningless
_BAR_FORMAT = "{desc:<10} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}]"
_KINDS: dict[str, type[BaseModel]] = {"edit": Edit, "unlearn": Unlearn, "retain": Retain}


class InputFileError(Exception):
    """An update file has bad lines; ``problems`` lists ``(line, field, message)``."""

    def __init__(self, path: Path, problems: list[tuple[int, str | None, str]]) -> None:
        self.path = path
        self.problems = problems
        lines = [
            f"{path}"
            + (f":{line}" if line else "")
            + ": "
            + (f"field '{name}': " if name else "")
            + message
            for line, name, message in problems
        ]
        super().__init__("\n".join(lines))


@dataclass
class UpdateBatch:
    """The edits, unlearns and retains read from one update file."""

    edits: list[Edit] = field(default_factory=list)
    unlearn: list[Unlearn] = field(default_factory=list)
    retain: list[Retain] = field(default_factory=list)


def _check_line(number: int, record: Any) -> tuple[BaseModel | None, list[tuple]]:
    """Validate one parsed JSONL record; returns the model or the problems found."""
    if not isinstance(record, dict):
        return None, [(number, None, "expected a JSON object")]
    kind = record.get("kind")
    if kind not in _KINDS:
        allowed = ", ".join(f'"{k}"' for k in _KINDS)
        return None, [(number, "kind", f"must be one of {allowed}, got {kind!r}")]
    fields = {k: v for k, v in record.items() if k != "kind"}
    if kind == "retain":  # the format allows paraphrases on every line; a retain has no use
        fields.pop("paraphrases", None)
    problems: list[tuple] = []
    prompt = fields.get("prompt")
    if isinstance(prompt, str) and not prompt.strip():
        problems.append((number, "prompt", "must not be empty"))
    target = fields.get("target")
    if kind != "retain" and isinstance(target, str) and not target.strip():
        problems.append((number, "target", "must not be empty"))
    try:
        model = _KINDS[kind].model_validate(fields)
    except PydanticValidationError as exc:
        for err in exc.errors():
            name = ".".join(str(p) for p in err["loc"]) or None
            problems.append((number, name, err["msg"]))
        return None, problems
    return (None if problems else model), problems


def read_update_file(path: Path) -> UpdateBatch:
    """Read a JSONL update file of ``{"kind", "prompt", "target", "paraphrases"}`` lines.

    Blank lines and lines starting with ``#`` are skipped.

    Raises:
        InputFileError: the file cannot be read, or lines are invalid (all are reported).
    """
    batch = UpdateBatch()
    problems: list[tuple[int, str | None, str]] = []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputFileError(path, [(0, None, f"cannot read: {exc}")]) from exc
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append((number, None, f"invalid JSON: {exc.msg} (column {exc.colno})"))
            continue
        model, found = _check_line(number, record)
        problems.extend(found)
        if isinstance(model, Edit):
            batch.edits.append(model)
        elif isinstance(model, Unlearn):
            batch.unlearn.append(model)
        elif isinstance(model, Retain):
            batch.retain.append(model)
    if problems:
        raise InputFileError(path, problems)
    if not batch.edits and not batch.unlearn:
        raise InputFileError(path, [(0, None, "no edit or unlearn lines")])
    return batch


class JobProgressDisplay:
    """Shows a job's progress on stderr: a tqdm bar per stage, or a plain status line."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stderr
        self._key: tuple[str, int, int] | None = None
        self._bar: Any = None
        try:
            from tqdm import tqdm
        except ImportError:  # the [cli] extra is not installed
            tqdm = None
        self._tqdm = tqdm

    def __call__(self, job: Job) -> None:
        """Render the state of ``job`` (called after every poll)."""
        stage = job.progress.stage if job.progress and job.progress.stage else job.status
        step = job.progress.step if job.progress else 0
        total = job.progress.total if job.progress else 0
        key = (stage, step, total)
        if key == self._key:
            return
        stage_changed = self._key is None or self._key[0] != stage
        self._key = key
        if self._tqdm is not None:
            if stage_changed:
                self._close_bar()
                self._bar = self._tqdm(
                    total=total or None, desc=stage, file=self._stream, bar_format=_BAR_FORMAT
                )
            if (total or None) != self._bar.total:
                self._bar.total = total or None
            self._bar.update(step - self._bar.n)
            return
        width = 30
        filled = int(width * step / total) if total else 0
        bar = "#" * filled + "." * (width - filled)
        end = "\r" if self._stream.isatty() else "\n"
        self._stream.write(f"{job.status:<9} {stage:<16} [{bar}] {step}/{total}{end}")
        self._stream.flush()

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def close(self) -> None:
        """Finish the display (closes the bar / ends the status line)."""
        self._close_bar()
        if self._tqdm is None and self._key is not None and self._stream.isatty():
            self._stream.write("\n")
            self._stream.flush()


# ---- output ---------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def _emit(value: Any) -> None:
    json.dump(_jsonable(value), sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")
    sys.stdout.flush()


def _wait(client: Client, job_id: str, timeout: float) -> Job:
    display = JobProgressDisplay()
    try:
        return client.wait_for_job(job_id, timeout=timeout, on_progress=display)
    finally:
        display.close()


# ---- commands -------------------------------------------------------------------------------


def _cmd_generate(client: Client, args: argparse.Namespace) -> Any:
    return client.generate(
        args.prompt,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        stop=args.stop,
        memory=args.memory,
    )


def _cmd_update(client: Client, args: argparse.Namespace) -> Any:
    batch = read_update_file(Path(args.file))
    logger.info(
        "submitting %d edits, %d unlearns, %d retains",
        len(batch.edits),
        len(batch.unlearn),
        len(batch.retain),
    )
    job = client.update(batch.edits, batch.unlearn, batch.retain, options=args.options)
    return _wait(client, job.id, args.wait_timeout) if args.wait else job


def _cmd_job(client: Client, args: argparse.Namespace) -> Any:
    return _wait(client, args.id, args.wait_timeout) if args.wait else client.job(args.id)


_COMMANDS: dict[str, Callable[[Client, argparse.Namespace], Any]] = {
    "health": lambda c, a: c.health(),
    "generate": _cmd_generate,
    "route": lambda c, a: c.route(a.prompt),
    "update": _cmd_update,
    "job": _cmd_job,
    "jobs": lambda c, a: c.jobs(),
    "cancel": lambda c, a: c.cancel_job(a.id),
    "memories": lambda c, a: c.memories(),
    "memory": lambda c, a: c.memory(a.id),
    "knowledge": lambda c, a: c.knowledge(),
    "piece": lambda c, a: c.piece(a.id),
    "codebook": lambda c, a: c.codebook(),
    "versions": lambda c, a: c.versions(),
    "rollback": lambda c, a: c.rollback(a.version),
}


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc.msg}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``loka-client``."""
    env = os.environ
    p = argparse.ArgumentParser(prog="loka-client", description="Command line of LOKA Serve.")
    p.add_argument(
        "--url",
        default=env.get("LOKA_URL", "http://127.0.0.1:8000"),
        help="server address (env LOKA_URL)",
    )
    p.add_argument(
        "--token", default=env.get("LOKA_API_TOKEN"), help="API bearer token (env LOKA_API_TOKEN)"
    )
    p.add_argument(
        "--admin-token",
        default=env.get("LOKA_ADMIN_TOKEN"),
        help="admin bearer token for knowledge changes (env LOKA_ADMIN_TOKEN)",
    )
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per HTTP request")
    p.add_argument("-v", "--verbose", action="store_true", help="log requests to stderr")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("health", help="check that the server is up")
    g = sub.add_parser("generate", help="complete a prompt")
    g.add_argument("prompt")
    g.add_argument("--memory", default="auto", help='"auto", "none" or a memory id')
    g.add_argument("--max-new-tokens", type=int, default=32)
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    r = sub.add_parser("route", help="show where a prompt is routed")
    r.add_argument("prompt")

    u = sub.add_parser("update", help="submit edits/unlearns from a JSONL file")
    u.add_argument(
        "--file",
        required=True,
        help='JSONL: {"kind": "edit"|"unlearn"|"retain", "prompt", "target", ...}',
    )
    u.add_argument(
        "--options",
        type=_json_object,
        default=None,
        help="trainer options as JSON, e.g. '{\"steps\": 30}'",
    )
    u.add_argument("--wait", action="store_true", help="wait for the job, showing progress")
    u.add_argument("--wait-timeout", type=float, default=3600.0)
    j = sub.add_parser("job", help="show a job")
    j.add_argument("id")
    j.add_argument("--wait", action="store_true", help="wait for the job, showing progress")
    j.add_argument("--wait-timeout", type=float, default=3600.0)
    sub.add_parser("jobs", help="list jobs")
    c = sub.add_parser("cancel", help="cancel a job")
    c.add_argument("id")

    sub.add_parser("memories", help="list memories")
    m = sub.add_parser("memory", help="show one memory")
    m.add_argument("id")
    sub.add_parser("knowledge", help="list knowledge pieces")
    pc = sub.add_parser("piece", help="show one knowledge piece")
    pc.add_argument("id")
    sub.add_parser("codebook", help="show the codebook version and counts")
    sub.add_parser("versions", help="list the published codebook versions")
    rb = sub.add_parser("rollback", help="publish a copy of an earlier codebook version")
    rb.add_argument("version", type=int)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``loka-client``; returns the process exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        with Client(args.url, args.token, args.admin_token, timeout=args.timeout) as client:
            _emit(_COMMANDS[args.command](client, args))
    except InputFileError as exc:
        sys.stderr.write(f"loka-client: invalid update file:\n{exc}\n")
        return EXIT_USAGE
    except (JobFailed, JobTimeout) as exc:
        sys.stderr.write(f"loka-client: {exc}\n")
        _emit(exc.job)
        return EXIT_ERROR
    except LokaClientError as exc:
        sys.stderr.write(f"loka-client: {exc}\n")
        return EXIT_ERROR
    except KeyboardInterrupt:
        sys.stderr.write("loka-client: interrupted\n")
        return 130
    except BrokenPipeError:  # stdout closed early (e.g. piped into `head`)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
