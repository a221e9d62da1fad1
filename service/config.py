"""Settings of the HTTP service, read from ``LOKA_*`` environment variables.

Every field maps to one variable: ``model`` <- ``LOKA_MODEL``, ``store_dir`` <- ``LOKA_STORE_DIR``,
``admin_token`` <- ``LOKA_ADMIN_TOKEN``, ... Invalid values raise ``pydantic.ValidationError``
naming the field when the service starts.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Configuration of LOKA Serve (the method's settings live in the store's ``LokaConfig``)."""

    model_config = SettingsConfigDict(env_prefix="LOKA_", extra="ignore", frozen=True)

    # -- model and store --------------------------------------------------------------------
    # "smollm2" (= None, the built-in SmolLM2-135M-Instruct), "tiny" (the small GPT-2 of the
    # tests), or the path or hub id of a causal LM
    model: str | None = None
    store_dir: Path = Path("data/store")
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    device: str = "cpu"
    # torch intra-op threads; None: 1 for models under 50M parameters, else torch's default.
    # On a loaded 2-core machine 1 thread also served an 87M GPT-2 ~6x faster than 2
    # (benchmarks/results/serving)
    threads: int | None = Field(None, ge=1, le=1024)
    # postgresql://user:pass@host/db: the codebook's tables (and the jobs) in PostgreSQL, shared
    # by every replica and worker; the files stay in store_dir (a shared volume). None: SQLite
    # in store_dir (one machine)
    database_url: str | None = None
    # materialised adapters kept in memory (LRU); the codebook itself stays on disk
    adapter_cache_size: int = Field(256, ge=1, le=1_000_000)

    # -- server -----------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"

    # -- auth: None (unset or empty) = open -------------------------------------------------
    # required by every endpoint that changes knowledge (updates, deletes, rollback, cancel)
    admin_token: SecretStr | None = None
    # required by generation and knowledge reads; the admin token is accepted there too
    api_token: SecretStr | None = None
    # who may bypass the gate (``memory: "none"``/``model: "base"`` or an explicit memory id):
    # "admin" callers only, or "all"; None: "admin" when an admin token is set, else "all".
    # Either way, a non-admin request the gate routes to a memory holding unlearned knowledge
    # is served by that memory (see ``service.policy``)
    base_access: Literal["admin", "all"] | None = None

    # -- request limits (422 beyond them, 413 for the body size) ----------------------------
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    max_prompt_chars: int = Field(4_000, ge=1)
    max_prompt_tokens: int = Field(1_024, ge=1)
    max_new_tokens: int = Field(512, ge=1)
    max_stop_sequences: int = Field(8, ge=0)
    max_target_chars: int = Field(2_000, ge=1)
    max_pieces_per_update: int = Field(1_000, ge=1)
    max_paraphrases: int = Field(32, ge=0)
    max_retain: int = Field(1_000, ge=0)
    max_train_steps: int = Field(2_000, ge=1)
    max_prompts_per_request: int = Field(16, ge=1)  # list prompts of /v1/completions
    max_chat_messages: int = Field(256, ge=1)
    # seconds a request body may stall between two reads (a body shorter than its
    # Content-Length) before the request is answered 408 and the connection closed
    body_timeout_s: float = Field(5.0, gt=0.0, le=3_600.0)

    # -- generation -------------------------------------------------------------------------
    # continuous batching: concurrent requests decode together, each row with its own memory;
    # new requests join between decoding steps, up to max_batch_size rows (8 capped the
    # throughput at 16 concurrent requests: benchmarks/results/serving). An idle server waits
    # batch_wait_ms for company before starting a new batch.
    max_batch_size: int = Field(32, ge=1, le=256)
    batch_wait_ms: float = Field(2.0, ge=0.0, le=1_000.0)

    # -- roles and jobs ---------------------------------------------------------------------
    # run a job worker in this process (`loka serve --no-worker` sets it False: HTTP only)
    worker: bool = True
    # a job interrupted this many times (its worker stopped or died) is failed, not re-run
    job_max_attempts: int = Field(3, ge=1)
    # a running job's lease; its worker renews it every quarter. A dead worker's job is taken
    # over by another this long after its last heartbeat
    job_lease_s: float = Field(30.0, gt=0.0, le=3_600.0)
    # how often a replica checks the head on SQLite (PostgreSQL notifies; polls each second)
    follow_poll_s: float = Field(0.25, gt=0.0, le=60.0)

    @property
    def base_access_policy(self) -> Literal["admin", "all"]:
        """``base_access`` with its default resolved."""
        if self.base_access is not None:
            return self.base_access
        return "admin" if self.admin_token is not None else "all"

    @field_validator("model", "threads", "admin_token", "api_token", "base_access",
                     "database_url",
                     mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """An empty variable (``LOKA_ADMIN_TOKEN=``) means "not set"."""
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @model_validator(mode="after")
    def _distinct_tokens(self) -> Settings:
        if (
            self.admin_token is not None
            and self.api_token is not None
            and self.admin_token.get_secret_value() == self.api_token.get_secret_value()
        ):
            raise ValueError("api_token: must differ from admin_token")
        return self


def load_settings(log: logging.Logger) -> Settings | None:
    """Set up logging and read the settings from the environment; None after logging each
    invalid variable (without its value: it may hold a token)."""
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = Settings()
    except ValidationError as exc:
        problems = "\n".join(
            f"  {'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}"
            for e in exc.errors(include_input=False, include_url=False)
        )
        log.error("invalid settings (LOKA_* environment variables):\n%s", problems)
        return None
    logging.getLogger().setLevel(settings.log_level.upper())
    return settings
