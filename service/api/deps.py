"""Typed dependencies of the routes: the service state, the engine, the job queue, and auth.

Auth: when ``LOKA_ADMIN_TOKEN`` is set, every endpoint that changes knowledge needs
``Authorization: Bearer <admin token>``. When ``LOKA_API_TOKEN`` is set, generation and the
knowledge reads need the API token (the admin token works there too). A missing or malformed
header is a 401, a wrong token a 403. Tokens are compared in constant time and never logged.
What was unlearned is shown to admin callers only, and only they may bypass the gate when
``LOKA_BASE_ACCESS`` is ``admin`` (``IsAdmin``, ``PolicyDep``; see ``service.policy``).
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from pydantic import SecretStr

from memory_store import Loka
from service.config import Settings
from service.errors import ServiceError
from service.jobs import JobQueue
from service.policy import Policy
from service.scheduler import GenerationScheduler
from service.state import ServiceState


def get_state(request: Request) -> ServiceState:
    """The state the lifespan built."""
    return request.app.state.service


StateDep = Annotated[ServiceState, Depends(get_state)]


def get_settings(state: StateDep) -> Settings:
    """The service settings."""
    return state.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


def not_ready(state: ServiceState) -> ServiceError:
    """The 503 to answer while the engine is not serving (loading, failed, shutting down)."""
    if state.load_error is not None:
        return ServiceError(503, "load_failed", f"the model failed to load: {state.load_error}")
    if state.closing:
        return ServiceError(503, "shutting_down", "the service is shutting down")
    return ServiceError(
        503, "not_ready", "the model is still loading", headers={"Retry-After": "5"}
    )


def get_engine(state: StateDep) -> Loka:
    """The engine; 503 until it is loaded."""
    if not state.ready or state.engine is None:
        raise not_ready(state)
    return state.engine


def get_jobs(state: StateDep) -> JobQueue:
    """The job queue; 503 until the engine is loaded."""
    if not state.ready or state.jobs is None:
        raise not_ready(state)
    return state.jobs


def get_generator(state: StateDep) -> GenerationScheduler:
    """The generator; 503 until the engine is loaded."""
    if not state.ready or state.generator is None:
        raise not_ready(state)
    return state.generator


EngineDep = Annotated[Loka, Depends(get_engine)]
JobsDep = Annotated[JobQueue, Depends(get_jobs)]
GeneratorDep = Annotated[GenerationScheduler, Depends(get_generator)]


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def _matches(token: str, secret: SecretStr | None) -> bool:
    if secret is None:
        return False
    return hmac.compare_digest(token.encode("utf-8"), secret.get_secret_value().encode("utf-8"))


def _unauthorized() -> ServiceError:
    return ServiceError(
        401, "unauthorized", "missing bearer token (Authorization: Bearer <token>)",
        headers={"WWW-Authenticate": "Bearer"},
    )


def require_admin(request: Request, settings: SettingsDep) -> None:
    """Endpoints that change knowledge: the admin token when one is configured."""
    if settings.admin_token is None:
        return
    token = _bearer(request)
    if token is None:
        raise _unauthorized()
    if not _matches(token, settings.admin_token):
        raise ServiceError(403, "forbidden", "this endpoint needs the admin token")


def require_api(request: Request, settings: SettingsDep) -> None:
    """Generation and reads: the API token (or the admin token) when an API token is set."""
    if settings.api_token is None:
        return
    token = _bearer(request)
    if token is None:
        raise _unauthorized()
    if not (_matches(token, settings.api_token) or _matches(token, settings.admin_token)):
        raise ServiceError(403, "forbidden", "invalid API token")


def caller_is_admin(request: Request, settings: SettingsDep) -> bool:
    """Whether the caller may see what only admins see (the targets of unlearning requests):
    it presents the admin token, or none is configured (then every caller may change
    knowledge, so hiding it would protect nothing)."""
    if settings.admin_token is None:
        return True
    token = _bearer(request)
    return token is not None and _matches(token, settings.admin_token)


AdminAuth = Depends(require_admin)
ApiAuth = Depends(require_api)
IsAdmin = Annotated[bool, Depends(caller_is_admin)]


def get_policy(settings: SettingsDep, engine: EngineDep, admin: IsAdmin) -> Policy:
    """The unlearning policy for this request's caller."""
    return Policy(settings, engine, admin)


PolicyDep = Annotated[Policy, Depends(get_policy)]
