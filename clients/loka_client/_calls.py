"""Request building and response parsing shared by :class:`Client` and :class:`AsyncClient`.

Each function here describes one endpoint as a :class:`Call` (method, path, body, which token,
how to parse the answer) without doing any I/O, so the sync and async clients only differ in
how they send it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx
import pydantic
from pydantic import BaseModel

from loka_client.errors import JobFailed, LokaClientError, ValidationError, error_from_response
from loka_client.models import (
    CodebookInfo,
    Edit,
    EditLike,
    GenerateResponse,
    Health,
    Job,
    Memory,
    MemoryDetail,
    ModelCard,
    ModelList,
    OptionsLike,
    Piece,
    Retain,
    RetainLike,
    RouteResponse,
    Unlearn,
    UnlearnLike,
    UpdateOptions,
    VersionList,
)

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

DEFAULT_URL = "http://127.0.0.1:8000"


@dataclass(frozen=True)
class Call(Generic[T]):
    """One HTTP request and how to turn its successful response into a value."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    json: Any = None
    admin: bool = False  # knowledge-changing: sent with the admin token
    params: dict[str, Any] | None = None  # query string (None values are left out)


class Auth:
    """Chooses the bearer token per call: admin for knowledge changes, api for the rest."""

    def __init__(self, api_token: str | None, admin_token: str | None) -> None:
        # One token given: it is used for everything.
        self.api_token = api_token or admin_token
        self.admin_token = admin_token or api_token

    def headers(self, admin: bool) -> dict[str, str]:
        """Authorization header for a call (empty when no token is configured)."""
        token = self.admin_token if admin else self.api_token
        return {"Authorization": f"Bearer {token}"} if token else {}


class ClientBase:
    """Configuration shared by the sync and async clients."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        api_token: str | None = None,
        admin_token: str | None = None,
        timeout: float = 60.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._auth = Auth(api_token, admin_token)

    def _request_args(self, call: Call[Any]) -> dict[str, Any]:
        """Keyword arguments of ``httpx.Client.request`` for ``call``."""
        args: dict[str, Any] = {
            "method": call.method,
            "url": call.path,
            "headers": self._auth.headers(call.admin),
        }
        if call.json is not None:
            args["json"] = call.json
        if call.params:
            params = {k: v for k, v in call.params.items() if v is not None}
            if params:
                args["params"] = params
        return args

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r})"


def check(response: httpx.Response) -> httpx.Response:
    """Raise the typed error for a failed response; return it unchanged otherwise."""
    if response.status_code >= 400:
        raise error_from_response(response)
    return response


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError as exc:
        raise LokaClientError(
            f"invalid JSON from {response.request.url}: {response.text[:200]!r}",
            status_code=response.status_code,
            type="invalid_response",
        ) from exc


def _one(model: type[M]) -> Callable[[httpx.Response], M]:
    return lambda r: model.model_validate(_json(r))


def _many(model: type[M], key: str) -> Callable[[httpx.Response], list[M]]:
    """Parse a list answered either bare or wrapped as ``{key: [...]}``."""

    def parse(response: httpx.Response) -> list[M]:
        body = _json(response)
        if isinstance(body, dict):
            body = body.get(key, body.get("data", []))
        return [model.model_validate(item) for item in body]

    return parse


def _seg(value: str | int) -> str:
    """One URL path segment (ids are escaped so they cannot change the path)."""
    return quote(str(value), safe="")


def _dump(item: BaseModel | dict[str, Any], model: type[BaseModel], where: str) -> dict[str, Any]:
    """Validate a model-or-dict request item and return its JSON form.

    Raises:
        ValidationError: the item does not fit ``model`` (``field`` names the first bad key,
            prefixed with ``where``, e.g. ``edits.0.target``); nothing is sent.
    """
    try:
        obj = item if isinstance(item, model) else model.model_validate(item)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join([where, *(str(p) for p in first["loc"])])
        raise ValidationError(
            f"{field}: {first['msg']}", type="invalid_input", field=field
        ) from exc
    return obj.model_dump(mode="json", exclude_none=True)


# ---- endpoints ------------------------------------------------------------------------------


def health() -> Call[Health]:
    return Call("GET", "/health", _one(Health))


def ready() -> Call[Health]:
    return Call("GET", "/ready", _one(Health))


def generate(
    prompt: str,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    stop: Sequence[str] | None,
    memory: str,
    seed: int | None = None,
) -> Call[GenerateResponse]:
    body: dict[str, Any] = {
        "prompt": prompt,
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "stop": list(stop or []),
        "memory": memory,
    }
    if seed is not None:
        body["seed"] = seed
    return Call("POST", "/v1/generate", _one(GenerateResponse), json=body)


def route(prompt: str) -> Call[RouteResponse]:
    return Call("POST", "/v1/route", _one(RouteResponse), json={"prompt": prompt})


def update(
    edits: Sequence[EditLike],
    unlearn: Sequence[UnlearnLike],
    retain: Sequence[RetainLike],
    options: OptionsLike | None,
) -> Call[Job]:
    body: dict[str, Any] = {
        "edits": [_dump(e, Edit, f"edits.{i}") for i, e in enumerate(edits)],
        "unlearn": [_dump(u, Unlearn, f"unlearn.{i}") for i, u in enumerate(unlearn)],
        "retain": [_dump(r, Retain, f"retain.{i}") for i, r in enumerate(retain)],
    }
    if options is not None:
        body["options"] = _dump(options, UpdateOptions, "options")
    return Call("POST", "/v1/updates", _one(Job), json=body, admin=True)


def job(job_id: str) -> Call[Job]:
    return Call("GET", f"/v1/jobs/{_seg(job_id)}", _one(Job))


def jobs(status: str | None = None, limit: int | None = None) -> Call[list[Job]]:
    params = {"status": status, "limit": limit}
    return Call("GET", "/v1/jobs", _many(Job, "jobs"), params=params)


def cancel_job(job_id: str) -> Call[Job]:
    return Call("DELETE", f"/v1/jobs/{_seg(job_id)}", _one(Job), admin=True)


def memories() -> Call[list[Memory]]:
    return Call("GET", "/v1/memories", _many(Memory, "memories"))


def memory(memory_id: str) -> Call[MemoryDetail]:
    return Call("GET", f"/v1/memories/{_seg(memory_id)}", _one(MemoryDetail))


def delete_memory(memory_id: str) -> Call[Job]:
    return Call("DELETE", f"/v1/memories/{_seg(memory_id)}", _one(Job), admin=True)


def knowledge(kind: str | None = None, memory_id: str | None = None) -> Call[list[Piece]]:
    params = {"kind": kind, "memory_id": memory_id}
    return Call("GET", "/v1/knowledge", _many(Piece, "pieces"), params=params)


def piece(piece_id: str) -> Call[Piece]:
    return Call("GET", f"/v1/knowledge/{_seg(piece_id)}", _one(Piece))


def delete_knowledge(piece_id: str) -> Call[Job]:
    return Call("DELETE", f"/v1/knowledge/{_seg(piece_id)}", _one(Job), admin=True)


def codebook() -> Call[CodebookInfo]:
    return Call("GET", "/v1/codebook", _one(CodebookInfo))


def versions() -> Call[VersionList]:
    return Call("GET", "/v1/codebook/versions", _one(VersionList))


def rollback(version: int) -> Call[Job]:
    body = {"version": version}
    return Call("POST", "/v1/codebook/rollback", _one(Job), json=body, admin=True)


def models() -> Call[ModelList]:
    return Call("GET", "/v1/models", _one(ModelList))


def model(model_id: str) -> Call[ModelCard]:
    return Call("GET", f"/v1/models/{_seg(model_id)}", _one(ModelCard))


def metrics() -> Call[str]:
    return Call("GET", "/metrics", lambda r: r.text)


def finished(job_: Job) -> bool:
    """True when a polled job is done; raises :class:`JobFailed` if it failed or was cancelled."""
    if job_.status in ("failed", "cancelled"):
        raise JobFailed(job_)
    return job_.status == "succeeded"
