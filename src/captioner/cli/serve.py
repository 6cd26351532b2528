"""`captioner serve`: the web page and the JSON API."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from captioner.serving.settings import ENV_PREFIX, ServerSettings

DEFAULTS = ServerSettings()


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "serve",
        help="serve the web page and the JSON API",
        description="Serve the web page and the JSON API. Every setting can also come from a "
        f"{ENV_PREFIX}<SETTING> environment variable ({ENV_PREFIX}PORT=9000); flags win.",
    )
    # Unset flags stay None so that ServerSettings keeps the one set of defaults.
    parser.add_argument(
        "--model", help="model folder, hub id or wandb: artifact (default: bundled)"
    )
    parser.add_argument("--host", help=f"address to listen on (default: {DEFAULTS.host})")
    parser.add_argument(
        "--port", type=int, help=f"port to listen on, 0 for any free one (default: {DEFAULTS.port})"
    )
    parser.add_argument(
        "--max-upload-mb", type=float, help=f"largest upload (default: {DEFAULTS.max_upload_mb:g})"
    )
    parser.add_argument(
        "--max-pixels", type=int, help=f"largest decoded image (default: {DEFAULTS.max_pixels})"
    )
    parser.add_argument(
        "--batching",
        action=argparse.BooleanOptionalAction,
        help="gather concurrent requests into micro-batches (default: on)",
    )
    parser.add_argument(
        "--max-batch-size",
        type=int,
        help=f"images per model call (default: {DEFAULTS.max_batch_size})",
    )
    parser.add_argument(
        "--batch-wait-ms",
        type=float,
        help=f"wait for a batch to fill (default: {DEFAULTS.batch_wait_ms:g})",
    )
    parser.add_argument(
        "--max-queue",
        type=int,
        help=f"requests waiting before more get 503 (default: {DEFAULTS.max_queue})",
    )
    parser.add_argument(
        "--request-timeout-s",
        type=float,
        help=f"answer 504 after this long (default: {DEFAULTS.request_timeout_s:g})",
    )
    parser.add_argument(
        "--decode-workers",
        type=int,
        help=f"threads decoding uploads (default: {DEFAULTS.decode_workers})",
    )
    parser.add_argument(
        "--cors-origin",
        dest="cors_origins",
        action="append",
        metavar="ORIGIN",
        help="let pages from ORIGIN (https://site.example) call the API; repeatable (default: none)",
    )
    parser.add_argument("--page-dir", type=Path, help="the built page (default: frontend/dist)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from captioner.cli import UsageError

    flags = {
        field.name: getattr(args, field.name)
        for field in dataclasses.fields(ServerSettings)
        if getattr(args, field.name, None) is not None
    }
    if "cors_origins" in flags:
        flags["cors_origins"] = tuple(flags["cors_origins"])
    try:
        settings = ServerSettings.from_env(**flags)
    except ValueError as error:
        raise UsageError(error) from None

    from captioner.serving.server import ServeError, serve

    try:
        serve(settings)
    except ServeError as error:
        raise UsageError(error) from None
    return 0
