"""Everything a server can be told, with the one set of defaults; `CAPTIONER_<FIELD>` environment
variables (CAPTIONER_PORT=9000, CAPTIONER_CORS_ORIGINS=https://a.example,https://b.example)
override the defaults, and the command line's flags override both."""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from captioner.config import check_int, check_number, parse_value
from captioner.images import DEFAULT_MAX_PIXELS, DEFAULT_MAX_SIDE
from captioner.page import default_page_dir

ENV_PREFIX = "CAPTIONER_"


@dataclass(frozen=True)
class ServerSettings:
    """The defaults suit a laptop demo; the limits bound what one request can cost."""

    model: str | None = None  # folder, hub id or wandb: artifact; None means the bundled model
    host: str = "127.0.0.1"
    port: int = 8000  # 0: any free port
    max_upload_mb: float = 10.0
    max_pixels: int = DEFAULT_MAX_PIXELS  # decoded size limit: refuses decompression bombs
    max_side: int = DEFAULT_MAX_SIDE  # longest side: a 1 x 39,000,000 PNG decodes for seconds
    batching: bool = True  # off: one model call per request (for comparison in benchmarks)
    max_batch_size: int = 8
    batch_wait_ms: float = 5.0  # how long a lone request waits for company before running
    # Requests being decoded or waiting for the model; one more is answered 503 + Retry-After.
    max_queue: int = 64
    # From the upload read to the caption; a request over it is answered 504.
    request_timeout_s: float = 30.0
    decode_workers: int = 2  # threads that decode and preprocess uploads beside the model's
    # Origins (https://site.example) whose pages may call the API; none by default.
    cors_origins: tuple[str, ...] = ()
    page_dir: Path = default_page_dir()

    def __post_init__(self) -> None:
        check_int("port", self.port, 0, 65535)
        check_number("max_upload_mb", self.max_upload_mb, 0, None, low_open=True)
        check_int("max_pixels", self.max_pixels, 1, None)
        check_int("max_side", self.max_side, 1, None)
        check_int("max_batch_size", self.max_batch_size, 1, 256)
        check_number("batch_wait_ms", self.batch_wait_ms, 0, 10_000)
        check_int("max_queue", self.max_queue, 1, None)
        check_number("request_timeout_s", self.request_timeout_s, 0, None, low_open=True)
        check_int("decode_workers", self.decode_workers, 1, 64)
        if not self.host:
            raise ValueError("host must be an address or name to listen on, got ''")
        for origin in self.cors_origins:
            parts = urlsplit(origin)
            if origin != "*" and not (
                parts.scheme in ("http", "https") and parts.netloc and parts.path in ("", "/")
            ):
                raise ValueError(
                    f"a CORS origin is '*' or scheme://host[:port] like "
                    f"https://site.example, got {origin!r}"
                )

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> ServerSettings:
        """The defaults, then `CAPTIONER_*` variables, then `overrides`; ValueError naming the
        variable or field for a value out of range or of the wrong type."""
        environ = os.environ if environ is None else environ
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            name = ENV_PREFIX + field.name.upper()
            if name in environ:
                values[field.name] = _parse(name, environ[name], hints[field.name])
        values.update(overrides)
        return cls(**values)


def _parse(name: str, text: str, kind: Any) -> Any:
    """One environment variable's text as the field's type (an empty text unsets a path)."""
    if kind == (str | None) and not text:
        return None
    if kind is Path:
        return Path(text)
    if kind == tuple[str, ...]:
        return tuple(item.strip() for item in text.split(",") if item.strip())
    return parse_value(name, text, kind)
