"""Validation of caller-supplied pieces and parsing of update files (JSONL)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from memory_store.errors import InvalidInput
from memory_store.types import PieceKind, PieceSpec, RetainSpec

MAX_TEXT_CHARS = 4000
MAX_PARAPHRASES = 32


def check_text(value: object, field: str, *, allow_empty: bool = False) -> str:
    """``value`` if it is a usable text (a string, not blank unless allowed, not too long,
    encodable); else InvalidInput naming ``field``."""
    if not isinstance(value, str):
        raise InvalidInput(f"{field} must be a string", field=field)
    if not allow_empty and not value.strip():
        raise InvalidInput(f"{field} must not be empty", field=field)
    if len(value) > MAX_TEXT_CHARS:
        raise InvalidInput(f"{field} is longer than {MAX_TEXT_CHARS} characters", field=field)
    try:  # a lone surrogate (from a JSON "\ud800" escape) breaks tokenizers and SQLite
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInput(f"{field} is not valid Unicode (a lone surrogate at character "
                           f"{exc.start})", field=field) from None
    return value


def validate(pieces: Sequence[PieceSpec], retain: Sequence[RetainSpec] = ()) -> None:
    """Raise ``InvalidInput`` naming the first bad field."""
    if not pieces:
        raise InvalidInput("an update needs at least one edit or unlearn piece", field="pieces")
    for i, p in enumerate(pieces):
        if p.kind not in (PieceKind.EDIT, PieceKind.UNLEARN):
            raise InvalidInput(f"unknown kind {p.kind!r}", field=f"pieces[{i}].kind")
        check_text(p.prompt, f"pieces[{i}].prompt")
        check_text(p.target, f"pieces[{i}].target")
        if len(p.paraphrases) > MAX_PARAPHRASES:
            raise InvalidInput(f"at most {MAX_PARAPHRASES} paraphrases",
                               field=f"pieces[{i}].paraphrases")
        for j, q in enumerate(p.paraphrases):
            check_text(q, f"pieces[{i}].paraphrases[{j}]")
    for i, r in enumerate(retain):
        check_text(r.prompt, f"retain[{i}].prompt")
        check_text(r.target, f"retain[{i}].target", allow_empty=True)


def parse_line(obj: object, where: str) -> PieceSpec | RetainSpec:
    if not isinstance(obj, dict):
        raise InvalidInput(f"{where}: expected a JSON object", field="line")
    kind = obj.get("kind")
    allowed = {"kind", "prompt", "target", "paraphrases", "subject"}
    extra = set(obj) - allowed
    if extra:
        raise InvalidInput(f"{where}: unknown field {sorted(extra)[0]!r}", field=sorted(extra)[0])
    for name in ("prompt",) if kind == "retain" else ("prompt", "target"):
        if name not in obj:
            raise InvalidInput(f"{where}: missing field {name!r}", field=name)
    if kind == "retain":
        prompt = check_text(obj["prompt"], f"{where}: prompt")
        target = check_text(obj.get("target", ""), f"{where}: target", allow_empty=True)
        return RetainSpec(prompt, target)
    if kind not in ("edit", "unlearn"):
        raise InvalidInput(f"{where}: kind must be 'edit', 'unlearn' or 'retain', got {kind!r}",
                           field="kind")
    paraphrases = obj.get("paraphrases", [])
    if not isinstance(paraphrases, list):
        raise InvalidInput(f"{where}: paraphrases must be a list of strings", field="paraphrases")
    return PieceSpec(
        PieceKind(kind),
        check_text(obj["prompt"], f"{where}: prompt"),
        check_text(obj["target"], f"{where}: target"),
        tuple(check_text(q, f"{where}: paraphrases[{j}]") for j, q in enumerate(paraphrases)),
        check_text(obj["subject"], f"{where}: subject") if obj.get("subject") is not None
        else None,
    )


def read_update_file(path: Path) -> tuple[list[PieceSpec], list[RetainSpec]]:
    """Read a JSONL update file; errors name the line number and the field."""
    pieces: list[PieceSpec] = []
    retain: list[RetainSpec] = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"cannot read {path}: {exc}", field="file") from exc
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"{where}: invalid JSON ({exc.msg})", field="line") from exc
        item = parse_line(obj, where)
        (retain if isinstance(item, RetainSpec) else pieces).append(item)
    if not pieces:
        raise InvalidInput(f"{path}: no edit or unlearn line", field="file")
    return pieces, retain
