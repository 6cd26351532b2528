"""`serve(settings)`: bind the port first (a bad or busy one is one line, before the model loads),
then run uvicorn on it."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from typing import Any

import uvicorn
from uvicorn.config import LOGGING_CONFIG

from captioner.serving.app import create_app
from captioner.serving.settings import ServerSettings

# Loggers that write a warning for each malformed request (a scanner or a fuzzer sends thousands),
# and the start of those warnings: each is let through once a minute, with a count.
CLIENT_ERROR_LOGS = {
    "uvicorn.error": "Invalid HTTP request",  # HTTP that h11 or httptools cannot parse
    "python_multipart.multipart": "",  # a malformed multipart body ("Found invalid character")
}
CLIENT_ERROR_LOG_INTERVAL_S = 60.0
BACKLOG = 2048  # uvicorn's default


class ServeError(Exception):
    """The server could not start: the message is one line for the user."""


class RateLimitedLog(logging.Filter):
    """Passes the first record starting with `prefix`, then at most one per `interval_s`, which
    says how many were held back since the last."""

    def __init__(self, prefix: str, interval_s: float, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.prefix, self.interval_s, self.clock = prefix, interval_s, clock
        self._last: float | None = None
        self._held = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.getMessage().startswith(self.prefix):
            return True
        now = self.clock()
        if self._last is not None and now - self._last < self.interval_s:
            self._held += 1
            return False
        if self._held:
            record.msg = f"{record.getMessage()} ({self._held} more since the last one logged)"
            record.args = ()
        self._last, self._held = now, 0
        return True


def bind(host: str, port: int) -> socket.socket:
    """A socket listening on host:port, for uvicorn; ServeError when that is refused."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except (OSError, OverflowError) as error:
        raise ServeError(f"cannot listen on {host}:{port}: {_reason(error)}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        # Listening now takes the port (another server that has bound it but not yet listened
        # would otherwise fail later, in uvicorn); connections wait while the model loads.
        sock.listen(BACKLOG)
    except (OSError, OverflowError) as error:
        sock.close()
        raise ServeError(f"cannot listen on {host}:{port}: {_reason(error)}") from None
    return sock


def _reason(error: Exception) -> str:
    return getattr(error, "strerror", None) or str(error)


def uvicorn_server(app: Any, configure_logging: bool = True) -> uvicorn.Server:
    """uvicorn over `app` (run it with `.run(sockets=[bind(...)])`), the warnings about
    malformed requests rate-limited; `configure_logging=False` leaves logging as it is."""
    config = uvicorn.Config(
        app, log_config=LOGGING_CONFIG if configure_logging else None, log_level="info"
    )
    for name, prefix in CLIENT_ERROR_LOGS.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, RateLimitedLog) for f in logger.filters):
            logger.addFilter(RateLimitedLog(prefix, CLIENT_ERROR_LOG_INTERVAL_S))
    return uvicorn.Server(config)


def serve(settings: ServerSettings) -> None:
    """Bind, load the model and warm it up, say where it is served, serve until interrupted."""
    sock = bind(settings.host, settings.port)
    try:
        app = create_app(settings)
        app.state.serving.model.warm_up()
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        print(f"captioner: serving on http://{shown}:{port}", flush=True)
        uvicorn_server(app).run(sockets=[sock])
    finally:
        sock.close()
