"""`captioner serve`: the web page and the JSON API."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from captioner.serving.settings import ENV_PREFIX, ServerSettings

DEFAULTS = ServerSettings()
# The settings that are numbers: flag (the field's name), type, what it sets.
LIMITS = (
    ("--max-upload-mb", float, "largest upload"),
    ("--max-pixels", int, "largest decoded image, in pixels"),
    ("--max-side", int, "longest side of a decoded image, in pixels"),
    ("--max-batch-size", int, "images per model call"),
    ("--batch-wait-ms", float, "how long a request waits for a batch to fill"),
    ("--max-queue", int, "requests waiting before more are answered 503"),
    ("--request-timeout-s", float, "answer 504 after this long"),
    ("--decode-workers", int, "threads decoding and preprocessing uploads"),
)


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
        "--batching",
        action=argparse.BooleanOptionalAction,
        help="gather concurrent requests into micro-batches (default: on)",
    )
    for flag, kind, what in LIMITS:
        default = getattr(DEFAULTS, flag[2:].replace("-", "_"))
        shown = f"{default:g}" if isinstance(default, float) else default
        parser.add_argument(flag, type=kind, help=f"{what} (default: {shown})")
    parser.add_argument(
        "--cors-origin",
        dest="cors_origins",
        action="append",
        metavar="ORIGIN",
        help="let pages from ORIGIN (https://site.example) call the API; repeatable (default: none)",
    )
    parser.add_argument(
        "--page-dir",
        type=Path,
        help="the built page (default: the one installed with captioner; in a checkout, "
        "frontend/dist)",
    )
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
