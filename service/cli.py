"""The ``loka`` command line: build the default model, update a store, generate, inspect, serve.

Examples::

    loka model build
    loka update --store data/store --file updates.jsonl
    loka generate --store data/store "The capital of Veltoria is" --json
    loka memories --store data/store
    loka serve --port 8000
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger("loka")

DEFAULT_STORE = os.environ.get("LOKA_STORE_DIR", "data/store")


def _jsonable(obj: Any) -> Any:
    if is_dataclass(obj):
        return {k: _jsonable(v) for k, v in asdict(obj).items()}
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _emit(obj: Any) -> None:
    sys.stdout.write(json.dumps(_jsonable(obj), indent=2, ensure_ascii=False) + "\n")


def _open(args: argparse.Namespace, progress: bool = True):
    from memory_store import Loka

    return Loka.open(Path(args.store), model=args.model, dtype=args.dtype, progress=progress)


# ---------------------------------------------------------------------------- commands

def cmd_model(args: argparse.Namespace) -> int:
    from memory_store.models.builtin import default_model_info, ensure_default_model
    from memory_store.models.smollm2 import ensure_smollm2, smollm2_info

    if args.path:
        _emit(default_model_info(Path(args.path)))
    elif args.tiny:
        if args.action == "build":
            ensure_default_model(progress=True)
        _emit(default_model_info(None))
    else:
        if args.action == "build":
            ensure_smollm2(fetch=True, progress=True)
            _warm_background_keys()
        _emit(smollm2_info())
    return 0


def _warm_background_keys() -> None:
    """Encode the shipped general prompts on the built-in model once (cached per model in
    ``$LOKA_CACHE_DIR/keys``), so that the first update of a new store does not pay for it."""
    import tempfile

    from memory_store import Loka

    with tempfile.TemporaryDirectory() as tmp:
        loka = Loka.open(Path(tmp), model="smollm2")
        try:
            loka.background_keys()
        finally:
            loka.close()


def cmd_update(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from memory_store.pieces_io import read_update_file
    from memory_store.types import UpdateOptions

    pieces, retain = read_update_file(Path(args.file))  # fail on a bad file before loading
    loka = _open(args)
    options = UpdateOptions(unlearn_loss=args.unlearn_loss, steps=args.steps, seed=args.seed)
    bars: dict[str, tqdm] = {}

    def progress(stage: str, step: int, total: int) -> None:
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = tqdm(total=total, desc=stage, file=sys.stderr, leave=False)
        bar.total = total
        bar.n = step
        bar.refresh()

    try:
        result = loka.update(pieces, retain, options, progress=progress)
    finally:
        for bar in bars.values():
            bar.close()
    _emit(result)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from memory_store.types import GenerationRequest

    loka = _open(args, progress=False)
    req = GenerationRequest(args.prompt, args.max_new_tokens, args.temperature, args.top_p,
                            tuple(args.stop or ()), args.memory, args.seed)
    result = loka.generate([req])[0]
    if args.json:
        _emit(result)
    else:
        sys.stdout.write(result.text + "\n")
    return 0


def cmd_route(args: argparse.Namespace) -> int:
    _emit(_open(args, progress=False).route([args.prompt])[0])
    return 0


def cmd_memories(args: argparse.Namespace) -> int:
    loka = _open(args, progress=False)
    _emit({"codebook": loka.codebook_info(), "memories": loka.memories()})
    return 0


def cmd_knowledge(args: argparse.Namespace) -> int:
    _emit(_open(args, progress=False).pieces())
    return 0


def cmd_versions(args: argparse.Namespace) -> int:
    _emit(_open(args, progress=False).versions())
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    _emit(_open(args, progress=False).rollback(args.version))
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    loka = _open(args, progress=False)
    if args.id.startswith("mem_"):
        _emit(loka.delete_memory(args.id))
    else:
        _emit(loka.delete_piece(args.id))
    return 0


def cmd_store(args: argparse.Namespace) -> int:
    from memory_store.codebook.check import check_store

    report = check_store(Path(args.store), all_versions=args.all_versions)
    _emit({"ok": report.ok, **_jsonable(report)})
    return 0 if report.ok else 1


def cmd_serve(args: argparse.Namespace) -> int:
    for name in ("host", "port", "store", "model"):
        value = getattr(args, name)
        if value is not None:
            os.environ["LOKA_STORE_DIR" if name == "store" else f"LOKA_{name.upper()}"] = str(value)
    if args.no_worker:
        os.environ["LOKA_WORKER"] = "false"
    from service.__main__ import main as serve_main

    return serve_main()


def cmd_worker(args: argparse.Namespace) -> int:
    for name in ("store", "model"):
        value = getattr(args, name)
        if value is not None:
            os.environ["LOKA_STORE_DIR" if name == "store" else f"LOKA_{name.upper()}"] = str(value)
    from service.worker import main as worker_main

    return worker_main()


# ---------------------------------------------------------------------------- parser

def _store_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", default=DEFAULT_STORE, help="store directory (default: %(default)s)")
    p.add_argument("--model", default=os.environ.get("LOKA_MODEL") or None,
                   help="smollm2 (the default), tiny, or a HF model directory or hub id")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loka", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("model", help="the built-in default model (SmolLM2-135M-Instruct)")
    p.add_argument("action", choices=["build", "info"])
    p.add_argument("--tiny", action="store_true",
                   help="the small local GPT-2 of the tests instead (LOKA_MODEL=tiny)")
    p.add_argument("--path", help="a tiny-model directory to describe (info)")
    p.set_defaults(func=cmd_model)

    p = sub.add_parser("update", help="apply a JSONL file of edits/unlearning requests")
    _store_args(p)
    p.add_argument("--file", required=True, help='JSONL: {"kind", "prompt", "target", ...}')
    p.add_argument("--steps", type=int, help="training steps per memory")
    p.add_argument("--unlearn-loss", choices=["npo", "ga", "idk"])
    p.add_argument("--seed", type=int)
    p.set_defaults(func=cmd_update)

    p = sub.add_parser("generate", help="generate from the updated model")
    _store_args(p)
    p.add_argument("prompt")
    p.add_argument("--memory", default="auto", help="auto | none | <memory id>")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--stop", action="append", help="stop string (repeatable)")
    p.add_argument("--seed", type=int)
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("route", help="which memory would serve a prompt")
    _store_args(p)
    p.add_argument("prompt")
    p.set_defaults(func=cmd_route)

    for name, func, text in (("memories", cmd_memories, "list the codebook's memories"),
                             ("knowledge", cmd_knowledge, "list the stored pieces"),
                             ("versions", cmd_versions, "list codebook versions")):
        p = sub.add_parser(name, help=text)
        _store_args(p)
        p.set_defaults(func=func)

    p = sub.add_parser("rollback", help="publish a new version equal to an earlier one")
    _store_args(p)
    p.add_argument("version", type=int)
    p.set_defaults(func=cmd_rollback)

    p = sub.add_parser("delete", help="revert a piece (pc_...) or drop a memory (mem_...)")
    _store_args(p)
    p.add_argument("id")
    p.set_defaults(func=cmd_delete)

    p = sub.add_parser("store", help="verify a store: hashes, index/metadata agreement")
    p.add_argument("action", choices=["check"])
    p.add_argument("--store", default=DEFAULT_STORE)
    p.add_argument("--all-versions", action="store_true", help="check every version")
    p.set_defaults(func=cmd_store)

    p = sub.add_parser("serve", help="run the HTTP service (settings: LOKA_* variables)")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--store")
    p.add_argument("--model")
    p.add_argument("--no-worker", action="store_true",
                   help="serve HTTP only; jobs are run by `loka worker` processes")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("worker", help="run jobs only, no HTTP (settings: LOKA_* variables)")
    p.add_argument("--store")
    p.add_argument("--model")
    p.set_defaults(func=cmd_worker)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from memory_store.errors import LokaError

    try:
        return args.func(args)
    except LokaError as exc:
        field = f" [{exc.field}]" if exc.field else ""
        sys.stderr.write(f"error ({exc.type}){field}: {exc.message}\n")
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
