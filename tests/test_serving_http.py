"""A real uvicorn server on a free port, for what only real sockets show: a client that sends its
whole body before reading the answer, and malformed HTTP."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from test_serving_api import MULTIPART_TYPE, multipart_body

from captioner import Captioner
from captioner.serving.app import create_app
from captioner.serving.server import RateLimitedLog, bind, uvicorn_server
from captioner.serving.settings import ServerSettings


@pytest.fixture(scope="module")
def server_url(tiny_captioner: Captioner) -> Iterator[str]:
    sock = bind("127.0.0.1", 0)
    server = uvicorn_server(
        create_app(ServerSettings(max_upload_mb=1), model=tiny_captioner), configure_logging=False
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.01)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(30)
    sock.close()


def test_urllib_sees_the_413_for_a_30_mb_upload(server_url: str) -> None:
    """urllib reads the answer only after sending the whole body: answering and closing early
    gave it "Connection reset by peer"."""
    request = urllib.request.Request(
        f"{server_url}/api/caption",
        data=multipart_body(b"\xff" * (30 * 1024 * 1024)),
        headers={"Content-Type": MULTIPART_TYPE},
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=60)
    assert caught.value.code == 413
    assert json.loads(caught.value.read()) == {
        "error": "the upload is larger than the limit of 1 MB"
    }


def raw_request(url: str, data: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(data)
        return connection.recv(4096)


def test_malformed_requests_are_logged_once_a_minute(
    server_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    bad_http = b"GET /api/health HTTP/1.1\r\nHost: x\r\nBad\rHeader: 1\r\n\r\n"
    with caplog.at_level(logging.WARNING):
        for _ in range(5):
            assert raw_request(server_url, bad_http).startswith(b"HTTP/1.1 400")
    noisy = [r for r in caplog.records if r.getMessage().startswith("Invalid HTTP request")]
    assert len(noisy) <= 1  # the first in this minute, unless another test already had it


def test_the_rate_limit_lets_one_through_per_interval_with_a_count() -> None:
    now = [0.0]
    limit = RateLimitedLog("Invalid HTTP request", 60.0, clock=lambda: now[0])

    def passes(message: str) -> bool:
        record = logging.LogRecord("uvicorn.error", logging.WARNING, "", 0, message, (), None)
        return limit.filter(record) and record.getMessage()

    assert passes("Invalid HTTP request received.") == "Invalid HTTP request received."
    assert [passes("Invalid HTTP request received.") for _ in range(3)] == [False] * 3
    assert passes("Started server process") == "Started server process"  # others: untouched
    now[0] = 61.0
    assert passes("Invalid HTTP request received.") == (
        "Invalid HTTP request received. (3 more since the last one logged)"
    )
