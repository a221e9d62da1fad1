"""The runtime state of one app: what the lifespan builds, kept on ``app.state.service``."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from memory_store import Loka
from service.config import Settings
from service.follower import HeadFollower
from service.jobs import JobQueue
from service.metrics import Metrics
from service.scheduler import GenerationScheduler


@dataclass
class ServiceState:
    """What the lifespan builds, kept on ``app.state.service``; reached through ``api.deps``."""

    settings: Settings
    metrics: Metrics
    engine: Loka | None = None
    jobs: JobQueue | None = None
    follower: HeadFollower | None = None
    generator: GenerationScheduler | None = None
    load_error: str | None = None
    closing: bool = False
    # called (from the loader thread) when loading fails; ``python -m service`` exits then
    on_load_failed: Callable[[BaseException], None] | None = None
    loaded: threading.Event = field(default_factory=threading.Event)

    @property
    def ready(self) -> bool:
        """True once everything is loaded and until shutdown starts."""
        return self.generator is not None and not self.closing
