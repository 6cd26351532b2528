"""`captioner caption`: caption images, folders, lists and datasets (resumable; one process or
many). The work is `captioner.collection`'s; this module only turns flags into its arguments."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from captioner.cli.flags import GENERATION_FLAGS, Flag, add_command, generation_options
from captioner.collection.job import (
    CollectionConfig,
    CollectionJob,
    CollectionSummary,
    default_workers,
)
from captioner.collection.rows import json_line

# flag -> CollectionConfig field
_COLLECTION_FLAGS = {
    "output": "output",
    "sidecar": "sidecar",
    "attention_dir": "attention_dir",
    "overwrite": "overwrite",
    "recursive": "recursive",
    "batch_size": "batch_size",
    "workers": "num_workers",
    "prefix": "prefix",
    "suffix": "suffix",
    "sentence_case": "sentence_case",
}
_DISTRIBUTED_FLAGS = ("devices", "num_nodes", "strategy")

INPUTS, OUTPUTS, CAPTIONS, SPEED = (
    "what to caption",
    "where captions go",
    "captions",
    "speed and scale",
)
FLAGS = (
    Flag("images", "image files, folders or glob patterns", INPUTS, nargs="*"),
    Flag("--recursive", "descend into sub-folders", INPUTS, short="-r"),
    Flag("--from-list", "one path a line", INPUTS, Path, "FILE"),
    Flag("--data", "a dataset load_records reads", INPUTS, str, "SOURCE"),
    Flag("--split", "only this split of --data (default: all of it)", INPUTS, str),
    Flag("--output", "FILE.jsonl or FILE.csv, one row an image", OUTPUTS, Path, "FILE", short="-o"),
    Flag("--sidecar", "write the caption beside each image, e.g. .txt", OUTPUTS, str, "EXT"),
    Flag(
        "--overwrite",
        "caption everything again (default: skip images already captioned)",
        OUTPUTS,
    ),
    Flag("--json", "standard output: one JSON object an image and line", OUTPUTS),
    Flag("--attention-dir", "save per-word heatmaps (PNG) here", OUTPUTS, Path, "DIR"),
    Flag("--quiet", "no progress bar", OUTPUTS, short="-q"),
    Flag("--model", "model folder, hub id or wandb: artifact (default: bundled)", CAPTIONS, str),
    Flag(
        "--prefix",
        f"text put before each caption, e.g. a trigger word (default: {CollectionConfig.prefix!r})",
        CAPTIONS,
        str,
        "TEXT",
    ),
    Flag(
        "--suffix",
        f"text put after each caption (default: {CollectionConfig.suffix!r})",
        CAPTIONS,
        str,
        "TEXT",
    ),
    Flag(
        "--sentence-case", "capital first letter and a full stop, as alt text is written", CAPTIONS
    ),
    *GENERATION_FLAGS,
    Flag(
        "--batch-size", f"images a batch (default: {CollectionConfig.batch_size})", SPEED, int, "N"
    ),
    Flag(
        "--workers",
        "image loading processes (default: one a core less one, at most 4: "
        f"{default_workers()} here)",
        SPEED,
        int,
        "N",
    ),
    Flag("--devices", "processes or GPUs a node: runs as a Lightning predict job", SPEED, str, "N"),
    Flag("--num-nodes", "machines (Lightning; default: 1)", SPEED, int, "M"),
    Flag(
        "--strategy",
        "Lightning strategy, e.g. ddp (default: Lightning's choice)",
        SPEED,
        str,
        "NAME",
    ),
)


def add_parser(commands: argparse._SubParsersAction) -> None:
    description = (
        "Caption images. Folders are read for images (recognised by content); rows go to "
        "--output FILE.jsonl|.csv, --sidecar files or standard output. Run again to resume: "
        "images already captioned are skipped, failed ones retried."
    )
    summary = "caption images, folders, lists or a dataset split"
    add_command(commands, "caption", summary, description, FLAGS, run)


def run(args: argparse.Namespace) -> int:
    from captioner.cli import UsageError
    from captioner.collection import CollectionJob, dataset_images, find_images, read_list
    from captioner.collection.inputs import dataset_files
    from captioner.model import Captioner

    config = _collection_config(args)
    distributed = any(getattr(args, flag) is not None for flag in _DISTRIBUTED_FLAGS)
    if distributed and config.output is None and config.sidecar is None:
        raise UsageError("--devices, --num-nodes and --strategy need --output or --sidecar")
    if args.json and config.output is not None:
        raise UsageError("--json is for standard output; --output FILE.jsonl writes JSON lines")
    if args.split is not None and args.data is None:
        raise UsageError("--split needs --data")
    try:
        sources = list(args.images) + (read_list(args.from_list) if args.from_list else [])
        items = find_images(sources, bool(config.recursive))
        if args.data is not None:
            items += dataset_images(args.data, args.split)
            if config.output is not None and config.output.resolve() in {
                file.resolve() for file in dataset_files(args.data)
            }:
                raise ValueError(
                    f"the output {config.output} is the data set's own caption file: "
                    "choose another output"
                )
    except (ValueError, FileNotFoundError) as error:
        raise UsageError(str(error)) from None
    if not items:
        raise UsageError("nothing to caption: give images, folders, --from-list or --data")

    model = Captioner.from_pretrained(args.model, runtime=_runtime(distributed))
    options = generation_options(args)
    to_stdout = config.output is None and config.sidecar is None
    printer = _Printer(bool(args.json), to_stdout, single=len(items) == 1)
    try:
        job = CollectionJob(model, items, config, printer, **options)
    except ValueError as error:
        raise UsageError(str(error)) from None
    try:
        summary = _predict(job, args) if distributed else job.run()
    except OSError as error:  # disk full, a folder made read-only meanwhile: rerun to resume
        where = f" {printable(os.fsdecode(error.filename))}" if error.filename else ""
        print(f"captioner: cannot write{where}: {error.strerror or error}", file=sys.stderr)
        return 1
    if not args.quiet and not to_stdout and job.rank == 0:
        print(f"captioner: {summary}", file=sys.stderr)
    return 1 if summary.failed else 0


def _collection_config(args: argparse.Namespace) -> CollectionConfig:
    from captioner.cli import UsageError

    values = _given(args, _COLLECTION_FLAGS)
    if args.quiet:
        values["progress"] = False
    try:
        return CollectionConfig(**values).validate()
    except ValueError as error:
        raise UsageError(str(error)) from None


def _given(args: argparse.Namespace, flags: dict[str, str]) -> dict:
    """The config fields of the flags that were given (None: not given, the library decides)."""
    return {
        field: getattr(args, flag)
        for flag, field in flags.items()
        if getattr(args, flag) is not None
    }


def _runtime(distributed: bool) -> str:
    """ONNX Runtime on CPU; PyTorch where a distributed job may put each rank on a GPU."""
    if not distributed:
        return "auto"
    try:
        import torch
    except ImportError:
        return "auto"  # _predict says what to install
    return "torch" if torch.cuda.is_available() else "auto"


def _predict(job: CollectionJob, args: argparse.Namespace) -> CollectionSummary:
    from captioner.cli import UsageError

    try:
        from captioner.collection.distributed import predict_collection
    except ImportError:
        raise UsageError(
            "--devices, --num-nodes and --strategy run on Lightning: pip install 'captioner[train]'"
        ) from None
    devices = args.devices
    if devices is not None and devices.lstrip("-").isdigit():
        devices = int(devices)
    options = {"devices": devices, "num_nodes": args.num_nodes, "strategy": args.strategy}
    try:
        return predict_collection(job, **{k: v for k, v in options.items() if v is not None})
    except ValueError as error:
        raise UsageError(str(error)) from None


class _Printer:
    """Rows to standard output (without --output or --sidecar), errors to stderr."""

    def __init__(self, json_lines: bool, to_stdout: bool, single: bool):
        self.json_lines = json_lines
        self.to_stdout = to_stdout
        self.single = single  # one image: just its caption, without the file name

    def __call__(self, row: dict) -> None:
        if self.to_stdout and self.json_lines:
            print(json_line(row), flush=True)
        elif "error" in row:
            print(f"{printable(row['image'])}: error: {row['error']}", file=sys.stderr, flush=True)
        elif self.to_stdout:
            for text in row.get("captions", [row["caption"]]):
                print(text if self.single else f"{printable(row['image'])}\t{text}", flush=True)


def printable(name: str) -> str:
    """A file name for a terminal: the bytes of one that is not UTF-8 as \\xNN escapes."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")
