"""The `captioner` command line: caption, features, train, eval, export, serve.

Each command lives in its own module with `add_parser(commands)` and `run(args) -> int`.
Flags default to None so that the library's configs keep the one set of defaults.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from captioner.cli import caption, evaluate, export, features, serve, train
from captioner.cli.extras import CHECKED_BY_THE_COMMAND, NEEDED_MODULES, require_training_extra
from captioner.hub import MissingExtraError, ModelLoadError, ModelNotFoundError
from captioner.runtime.onnx import ExportedModelError

COMMANDS = (caption, features, train, evaluate, export, serve)


class UsageError(Exception):
    """A bad flag or value: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error said in one line (exit code 2) like every other one."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="captioner",
        description=__doc__.splitlines()[0],
        epilog="`captioner COMMAND --help` lists a command's flags and their defaults.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        # Before any work or import of the extra.
        if args.command in NEEDED_MODULES and args.command not in CHECKED_BY_THE_COMMAND:
            require_training_extra(args.command)
        return args.run(args)
    except (
        ModelNotFoundError,
        ModelLoadError,
        ExportedModelError,
        MissingExtraError,
        UsageError,
    ) as error:
        print(f"captioner: {error}", file=sys.stderr)
        return 2
