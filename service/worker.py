"""``loka worker`` (``python -m service.worker``): a process that only runs jobs, no HTTP.

Configured by the same ``LOKA_*`` variables as the server: it opens the engine on
``LOKA_STORE_DIR`` (and ``LOKA_DATABASE_URL``), claims jobs with leases until SIGTERM or SIGINT,
then hands its running job back (queued again) and exits. Exits with status 1 if the engine
fails to load, 2 on invalid settings.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading

from service.config import load_settings

logger = logging.getLogger("service.worker")


def main() -> int:
    """Run jobs until stopped; the exit status."""
    settings = load_settings(logger)
    if settings is None:
        return 2
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    from memory_store import Loka
    from memory_store.errors import LokaError
    from service.jobs import JobQueue

    try:
        engine = Loka.open(settings.store_dir, model=settings.model, dtype=settings.dtype,
                           device=settings.device, threads=settings.threads,
                           adapter_cache_size=settings.adapter_cache_size,
                           database_url=settings.database_url or "")
    except (LokaError, OSError) as exc:
        logger.error("loading the engine failed: %s", getattr(exc, "message", exc))
        return 1
    queue = JobQueue(engine.store, engine, max_attempts=settings.job_max_attempts,
                     lease_s=settings.job_lease_s)
    queue.start(worker=True)
    logger.info("worker %s ready: codebook version %d", queue.owner, engine.version)
    stop.wait()
    logger.info("worker stopping")
    if queue.stop(timeout=30.0):
        engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
