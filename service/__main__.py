"""``python -m service``: run LOKA Serve with uvicorn, configured by ``LOKA_*`` variables.

Exits with status 1 if the model or the store fails to load, 2 on invalid settings.
"""

from __future__ import annotations

import logging
import sys

import uvicorn

from service.config import load_settings

logger = logging.getLogger("service")


def main() -> int:
    """Start the server and block until it stops; the exit status."""
    settings = load_settings(logger)
    if settings is None:
        return 2

    from service.main import create_app  # imports torch; after the settings are known good

    app = create_app(settings)
    server = uvicorn.Server(
        uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level)
    )
    state = app.state.service

    def stop(_: BaseException) -> None:
        server.should_exit = True

    state.on_load_failed = stop
    logger.info("LOKA Serve on http://%s:%d (store %s)", settings.host, settings.port,
                settings.store_dir)
    server.run()
    if state.load_error is not None:
        logger.error("stopped: the engine failed to load: %s", state.load_error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
