"""Liveness and readiness: 200 ``{"status": "ok"}`` once the model is loaded, 503 before."""

from __future__ import annotations

from fastapi import APIRouter

from service.api.deps import StateDep, not_ready

router = APIRouter(tags=["health"])


@router.get("/", include_in_schema=False)
def index(state: StateDep) -> dict:
    """Where to start: the interactive API docs and the readiness state."""
    return {
        "name": "LOKA Serve",
        "docs": "/docs",
        "ready": state.ready,
        "model": state.engine.model_name if state.engine is not None else None,
    }


@router.get("/health")
def health(state: StateDep) -> dict[str, str]:
    """200 once the model is loaded (and while the service shuts down); 503 before."""
    if state.generator is None:
        raise not_ready(state)
    return {"status": "ok"}


@router.get("/ready")
def ready(state: StateDep) -> dict[str, str]:
    """200 while requests can be served: loaded and not shutting down; 503 otherwise."""
    if not state.ready:
        raise not_ready(state)
    return {"status": "ok"}
