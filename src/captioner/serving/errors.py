"""Every failure as one JSON line, `{"error": "..."}`, with the status that says whose fault it
is, and the upload limit enforced before a large body is read."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from captioner.images import ImageLoadError, ImageTooLargeError, UnsupportedImageError
from captioner.serving.batcher import DeadlineExceededError, QueueFullError
from captioner.serving.schemas import ErrorResponse

log = logging.getLogger(__name__)

# Seconds a client told "the queue is full" should wait before trying again.
RETRY_AFTER_S = 1
# A refused upload's body is read (and dropped) up to this many bytes before answering, so that
# clients which only read the answer once they have sent everything (Python's urllib) see the
# 413; a client sending more than this has its connection closed instead.
DRAIN_LIMIT_BYTES = 256 * 1024 * 1024

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "a malformed multipart body"},
    413: {"model": ErrorResponse, "description": "upload or decoded image too large"},
    415: {"model": ErrorResponse, "description": "not an image, or an unsupported format"},
    422: {"model": ErrorResponse, "description": "bad options, or a truncated or corrupt image"},
    503: {"model": ErrorResponse, "description": "the queue is full: retry after Retry-After s"},
    504: {"model": ErrorResponse, "description": "not answered within the request deadline"},
}


def error_response(
    status: int, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def upload_too_large_message(max_upload_mb: float) -> str:
    return f"the upload is larger than the limit of {max_upload_mb:g} MB"


def image_error_status(error: ImageLoadError) -> int:
    if isinstance(error, ImageTooLargeError):
        return 413
    if isinstance(error, UnsupportedImageError):
        return 415
    return 422  # truncated or corrupt


def add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ImageLoadError)
    async def bad_image(request: Request, error: ImageLoadError) -> JSONResponse:
        return error_response(image_error_status(error), str(error))

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = [
            f"{'.'.join(str(p) for p in problem['loc'][1:]) or 'request'}: {problem['msg']}"
            for problem in error.errors()
        ]
        return error_response(422, "; ".join(problems))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        # The exception's headers carry meaning: `Allow` on a 405, for one.
        return error_response(error.status_code, str(error.detail), error.headers)

    @app.exception_handler(QueueFullError)
    async def queue_full(request: Request, error: QueueFullError) -> JSONResponse:
        message = f"the server is busy ({error}); retry in {RETRY_AFTER_S} s"
        return error_response(503, message, {"Retry-After": str(RETRY_AFTER_S)})

    @app.exception_handler(DeadlineExceededError)
    async def too_slow(request: Request, error: DeadlineExceededError) -> JSONResponse:
        return error_response(504, f"the server is overloaded: {error}")

    @app.exception_handler(Exception)
    async def server_error(request: Request, error: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return error_response(500, "the server failed to caption this image; see its log")


class UploadLimit:
    """ASGI middleware: a body over `max_bytes` sent to `path` is answered 413 (JSON), from its
    Content-Length before anything is read, or as soon as a chunked body passes the limit; the
    rest of the body is read and dropped first (up to DRAIN_LIMIT_BYTES)."""

    def __init__(self, app: ASGIApp, path: str, max_bytes: int, message: str):
        self.app, self.path, self.max_bytes, self.message = app, path, max_bytes, message

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            await _drain(receive, more_body=True)
            await self._refuse(send)
            return
        received = 0
        over = False

        async def counting_receive() -> Message:
            nonlocal received, over
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    over = True
                    await _drain(receive, message.get("more_body", False))
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            if not over:  # whatever the app answers to a read cut short is replaced by the 413
                await send(message)

        with contextlib.suppress(_BodyTooLarge):
            await self.app(scope, counting_receive, guarded_send)
        if over:
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps({"error": self.message}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class _BodyTooLarge(Exception):
    pass


async def _drain(receive: Receive, more_body: bool) -> None:
    drained = 0
    while more_body and drained <= DRAIN_LIMIT_BYTES:
        message = await receive()
        if message["type"] != "http.request":
            return
        drained += len(message.get("body", b""))
        more_body = message.get("more_body", False)
