"""Who may bypass the gate, and what non-admin callers may learn about unlearned knowledge.

An unlearning service must not let a caller read back what it was asked to forget. So, for a
caller without the admin token (when one is configured; without one every caller is an admin):

- **Base access** (``LOKA_BASE_ACCESS``): under ``admin`` (the default when an admin token is
  set) asking for the base model (``memory: "none"``, ``model: "base"``) or an explicit memory
  id is a 403 naming the field; under ``all`` it is allowed, but
- **unlearning always applies**: a request whose prompt the gate routes to a memory that holds
  unlearned knowledge (kind ``unlearn`` or ``mixed``: a *hidden* memory) is served by that
  memory whatever it asked for (it is served as ``auto``, i.e. routed);
- **hidden memories do not exist** for the caller: they are left out of ``/v1/memories`` and are
  a 404 by id (``/v1/memories/{id}``, ``/v1/models/{id}``, ``memory``/``model`` selections);
  unlearn pieces are left out of ``/v1/knowledge`` and a 404 by id; an edit piece stored in a
  hidden memory shows ``memory_id: null``;
- **no membership oracle**: wherever a response says how a prompt was routed (``/v1/route``,
  ``/v1/generate``, the ``loka`` field of OpenAI choices), ``memory_id``, ``gate`` and
  ``similarity`` are reported only when a visible (edit-only) memory served; otherwise all
  three are null, so a prompt routed to unlearned knowledge reads exactly like one that the base
  model served. (Job results and codebook counts name ids and numbers, never texts.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from memory_store import Loka
from memory_store.errors import NotFound
from memory_store.types import GenerationResult, Piece, PieceKind
from service.config import Settings
from service.errors import ServiceError
from service.scheduler import GenerationScheduler as Generator

HIDDEN_KINDS = ("unlearn", "mixed")


def forbidden_selection(field: str, value: str) -> ServiceError:
    """The 403 for a non-admin caller asking to bypass the gate under the ``admin`` policy."""
    what = "the base model" if value in ("none", "base") else "an explicit memory"
    return ServiceError(
        403, "forbidden",
        f"{field}: only admin callers may ask for {what} (LOKA_BASE_ACCESS=admin); "
        f'use "auto" (native) or "loka" (OpenAI) to be routed', field=field,
    )


def hidden_memories(pieces: Sequence[Piece]) -> set[str]:
    """The memories holding at least one unlearn piece."""
    return {p.memory_id for p in pieces if p.kind == PieceKind.UNLEARN}


class Policy:
    """The rules above for one request: ``admin`` says whether its caller is an admin."""

    def __init__(self, settings: Settings, engine: Loka, admin: bool) -> None:
        self.settings = settings
        self.engine = engine
        self.admin = admin

    def is_hidden(self, memory_id: str) -> bool:
        """Whether ``memory_id`` is hidden from this caller (one that vanished counts as
        hidden: redacting it is the safe side). Blocking."""
        if self.admin:
            return False
        try:
            return self.engine.memory(memory_id).kind in HIDDEN_KINDS
        except NotFound:
            return True

    def check_selection(self, memory: str, field: str, value: str | None = None) -> None:
        """403 for a non-admin selection other than ``auto`` under the ``admin`` policy; 404
        (``NotFound`` naming ``field``) for an explicit hidden memory. Blocking."""
        if self.admin or memory == "auto":
            return
        if self.settings.base_access_policy == "admin":
            raise forbidden_selection(field, value if value is not None else memory)
        if memory != "none" and self.is_hidden(memory):  # the engine's answer for an unknown id
            raise NotFound(f"no memory {memory!r} in codebook version {self.engine.version}",
                           field=field)

    def served(self, memory: str, prompts: Sequence[str], generator: Generator) -> list[str]:
        """The selection each prompt is served with: ``memory``, or ``auto`` for a non-admin
        prompt the gate routes to a hidden memory. Blocking (one routing forward)."""
        if self.admin or memory == "auto":
            return [memory] * len(prompts)
        routes = generator.route(prompts)
        return ["auto" if r.memory_id is not None and self.is_hidden(r.memory_id) else memory
                for r in routes]

    def shows(self, memory_id: str | None) -> bool:
        """Whether the routing of an answer served by ``memory_id`` is shown. Blocking."""
        return self.admin or (memory_id is not None and not self.is_hidden(memory_id))

    def result(self, r: GenerationResult) -> GenerationResult:
        """``r`` as this caller may see it (see the module docstring). Blocking."""
        if self.shows(r.memory_id):
            return r
        # the engine's dataclass types gate as float; the service reports a withheld one as null
        return dataclasses.replace(r, memory_id=None, gate=None, similarity=None)  # type: ignore[arg-type]

    def results(self, rs: Sequence[GenerationResult]) -> list[GenerationResult]:
        """``result`` of each."""
        return [self.result(r) for r in rs]
