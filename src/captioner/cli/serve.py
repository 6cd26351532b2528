"""`captioner serve`: the web page and the JSON API."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("serve", help="serve the web page and the JSON API")
    parser.add_argument(
        "--model", help="model folder, hub id or wandb: artifact (default: bundled)"
    )
    # Unset flags stay None so that ServerSettings keeps the one set of defaults.
    parser.add_argument("--host", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default: 8000)")
    parser.add_argument("--max-upload-mb", type=float, help="largest upload (default: 10)")
    parser.add_argument("--max-pixels", type=int, help="largest decoded image (default: 40M)")
    parser.add_argument(
        "--batching",
        action=argparse.BooleanOptionalAction,
        help="gather concurrent requests into micro-batches (default: on)",
    )
    parser.add_argument("--max-batch-size", type=int, help="images per model call (default: 8)")
    parser.add_argument("--batch-wait-ms", type=float, help="wait for a batch to fill (default: 5)")
    parser.add_argument("--page-dir", type=Path, help="the built page (default: frontend/dist)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from captioner.server import serve

    return serve(args)
