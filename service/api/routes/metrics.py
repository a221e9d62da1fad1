"""``GET /metrics``: Prometheus exposition of this app's registry."""

from __future__ import annotations

from fastapi import APIRouter, Response

from service.api.deps import StateDep
from service.metrics import CONTENT_TYPE

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response)
def metrics(state: StateDep) -> Response:
    """Requests, latency, tokens, gate decisions, jobs by status, codebook size."""
    return Response(content=state.metrics.render(), media_type=CONTENT_TYPE)
