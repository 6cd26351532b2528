"""Command-line flags as data: a command is a table of `Flag`s that one loop adds to its parser.

Also the decoding flags `caption` and `eval` share, named as Hugging Face names the options
(`--num-beams` is `num_beams`); a flag's old name still works, with a note naming the new one.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from captioner.config import GenerationConfig


@dataclass(frozen=True)
class Flag:
    """One flag of a command (`--name`), or a positional argument (a name without dashes)."""

    name: str
    help: str
    group: str | None = None  # the --help section that lists it (None: the command's own)
    type: Callable[[str], Any] | None = None  # None: a switch, true when given
    metavar: str | None = None
    short: str | None = None  # e.g. "-o"
    old_names: tuple[str, ...] = ()  # still taken, each use noted with the new name
    required: bool = False
    nargs: str | None = None  # a positional's: "*" for any number

    @property
    def dest(self) -> str:
        """The attribute of the parsed arguments that holds its value."""
        return self.name.lstrip("-").replace("-", "_")


def add_command(
    commands: argparse._SubParsersAction,
    name: str,
    summary: str,
    description: str,
    flags: Sequence[Flag],
    run: Callable[[argparse.Namespace], int],
) -> argparse.ArgumentParser:
    """The parser of command `name` with `flags`, in order, each in its group."""
    parser = commands.add_parser(name, help=summary, description=description)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for flag in flags:
        if flag.group is not None and flag.group not in groups:
            groups[flag.group] = parser.add_argument_group(flag.group)
        add_flag(groups[flag.group] if flag.group is not None else parser, flag)
    parser.set_defaults(run=run)
    return parser


def add_flag(parser: argparse._ActionsContainer, flag: Flag) -> None:
    """Flags default to None: the library's configs keep the one set of defaults."""
    if not flag.name.startswith("-"):
        parser.add_argument(flag.name, nargs=flag.nargs, help=flag.help)
        return
    switch = flag.type is None
    value: dict[str, Any] = {} if switch else {"type": flag.type, "metavar": flag.metavar}
    names = (flag.short, flag.name) if flag.short else (flag.name,)
    old = f" (old name: {', '.join(flag.old_names)})" if flag.old_names else ""
    parser.add_argument(
        *names,
        action="store_true" if switch else "store",
        default=None,
        required=flag.required,
        help=flag.help + old,
        **value,
    )
    for old_name in flag.old_names:
        parser.add_argument(
            old_name,
            action=_OldName,
            new_name=flag.name,
            dest=flag.dest,
            nargs=0 if switch else None,
            default=None,
            help=argparse.SUPPRESS,
            **value,
        )


class _OldName(argparse.Action):
    """A flag's old name: taken as the new one is, after one line on stderr naming the new one."""

    def __init__(self, option_strings: list[str], dest: str, new_name: str, **kwargs: Any):
        super().__init__(option_strings, dest, **kwargs)
        self.new_name = new_name

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        print(f"{parser.prog}: {option_string} is now {self.new_name}", file=sys.stderr)
        setattr(namespace, self.dest, True if self.nargs == 0 else values)


def model_default(option: str) -> str:
    """How a decoding flag's help says its default."""
    default = getattr(GenerationConfig, option)
    return f"default: the model's own; {default} unless its config says"


DECODING = "decoding (Hugging Face's names)"
NUM_BEAMS = Flag(
    "--num-beams",
    f"beams, 1 = greedy ({model_default('num_beams')})",
    DECODING,
    int,
    "N",
    old_names=("--beam",),
)
GENERATION_FLAGS = (
    NUM_BEAMS,
    Flag(
        "--max-new-tokens",
        f"longest caption ({model_default('max_new_tokens')})",
        DECODING,
        int,
        "N",
        old_names=("--max-tokens",),
    ),
    Flag(
        "--min-new-tokens",
        f"shortest caption ({model_default('min_new_tokens')})",
        DECODING,
        int,
        "N",
        old_names=("--min-tokens",),
    ),
    Flag(
        "--num-return-sequences",
        "K captions an image: the best K beams, or K samples with --do-sample (default: "
        f"{GenerationConfig.num_return_sequences})",
        DECODING,
        int,
        "K",
        old_names=("--num-captions",),
    ),
    Flag(
        "--length-penalty",
        f"a beam's score is log p / length ** P ({model_default('length_penalty')})",
        DECODING,
        float,
        "P",
    ),
    Flag(
        "--no-repeat-ngram-size",
        f"no run of N tokens twice in a caption, 0 = off ({model_default('no_repeat_ngram_size')})",
        DECODING,
        int,
        "N",
    ),
    Flag("--do-sample", "sample instead of beam search", DECODING, old_names=("--sample",)),
    Flag("--top-p", f"sampling nucleus ({model_default('top_p')})", DECODING, float, "P"),
    Flag(
        "--temperature",
        f"sampling temperature ({model_default('temperature')})",
        DECODING,
        float,
        "T",
    ),
    Flag("--seed", "seed for --do-sample (default: random)", DECODING, int, "N"),
)


def generation_options(args: argparse.Namespace) -> dict[str, Any]:
    """The GenerationConfig fields of the decoding flags given (a flag's name is its field's)."""
    given = {flag.dest: getattr(args, flag.dest, None) for flag in GENERATION_FLAGS}
    return {field: value for field, value in given.items() if value is not None}
