"""Domain errors of the LOKA engine.

Every error carries a stable ``type`` string; the HTTP layer maps each class to a status code
and returns ``{"error": {"type": ..., "message": ..., "field": ...}}``.
"""

from __future__ import annotations


class LokaError(Exception):
    """Base class of all engine errors."""

    type: str = "loka_error"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidInput(LokaError):
    """A caller-supplied value is invalid (maps to 422)."""

    type = "invalid_input"


class NotFound(LokaError):
    """An id that names no memory, piece, version or job (maps to 404)."""

    type = "not_found"


class ConflictError(LokaError):
    """The request conflicts with the current state (maps to 409)."""

    type = "conflict"


class ModelMismatch(LokaError):
    """A store was created with a different base model than the one loaded (maps to 409)."""

    type = "model_mismatch"


class StoreError(LokaError):
    """The store on disk is unreadable, corrupted or not writable (maps to 500/503)."""

    type = "store_error"


class Cancelled(LokaError):
    """An update was cancelled by its caller before it published."""

    type = "cancelled"


class HeadMoved(ConflictError):
    """A publish was based on a version that is no longer the head: another writer published
    first. The writer re-plans on the new head and retries; nothing was written."""

    type = "head_moved"

    def __init__(self, base: int, head: int) -> None:
        super().__init__(f"the codebook head moved from version {base} to {head} during the "
                         "change")
        self.base = base
        self.head = head


class LeaseLost(ConflictError):
    """A job's publish found that this worker no longer holds the job (its lease expired and
    another worker took it): nothing was published."""

    type = "lease_lost"


class NotReached(LokaError):
    """An update asked for ``require_reached`` and some piece did not take (maps to 422);
    nothing was published. ``checks`` lists the failed pieces."""

    type = "not_reached"

    def __init__(self, message: str, *, checks: tuple = (), field: str | None = None) -> None:
        super().__init__(message, field=field)
        self.checks = checks
