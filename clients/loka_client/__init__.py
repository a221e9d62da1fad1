"""Python client of LOKA Serve: edit and unlearn facts in a served language model.

>>> from loka_client import Client
>>> with Client("http://127.0.0.1:8000", admin_token="...") as client:
...     job = client.update(edits=[{"prompt": "The capital of Freedonia is", "target": " Paris"}])
...     client.wait_for_job(job.id)
...     client.generate("The capital of Freedonia is").text
"""

from loka_client.async_client import AsyncClient
from loka_client.client import Client
from loka_client.errors import (
    BadRequest,
    Conflict,
    ConnectionFailed,
    Forbidden,
    JobFailed,
    JobTimeout,
    LokaClientError,
    NotFound,
    PayloadTooLarge,
    ServerError,
    ServiceUnavailable,
    Unauthorized,
    ValidationError,
)
from loka_client.models import (
    ChangeResult,
    CodebookInfo,
    ConflictDecision,
    Edit,
    GenerateResponse,
    Health,
    Job,
    JobProgress,
    JobResult,
    Memory,
    MemoryDetail,
    ModelCard,
    ModelList,
    Piece,
    Retain,
    RouteResponse,
    Unlearn,
    UpdateOptions,
    Usage,
    Version,
    VersionList,
)

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "BadRequest",
    "ChangeResult",
    "Client",
    "CodebookInfo",
    "Conflict",
    "ConflictDecision",
    "ConnectionFailed",
    "Edit",
    "Forbidden",
    "GenerateResponse",
    "Health",
    "Job",
    "JobFailed",
    "JobProgress",
    "JobResult",
    "JobTimeout",
    "LokaClientError",
    "Memory",
    "MemoryDetail",
    "ModelCard",
    "ModelList",
    "NotFound",
    "PayloadTooLarge",
    "Piece",
    "Retain",
    "RouteResponse",
    "ServerError",
    "ServiceUnavailable",
    "Unauthorized",
    "Unlearn",
    "UpdateOptions",
    "Usage",
    "ValidationError",
    "Version",
    "VersionList",
    "__version__",
]
