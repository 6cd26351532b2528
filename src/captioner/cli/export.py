"""`captioner export`: re-save a model (e.g. in half precision), or export it as ONNX."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from captioner.runtime.onnx import VARIANTS

if TYPE_CHECKING:
    from captioner.torch_model import CaptionModel


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "export", help="re-save a model (e.g. in half precision), or export it as ONNX"
    )
    parser.add_argument("model", help="model folder, hub id or wandb: artifact")
    parser.add_argument("output", type=Path, nargs="?", help="folder to re-save the model to")
    parser.add_argument("--half", action="store_true", help="store the weights as float16")
    parser.add_argument(
        "--onnx",
        type=Path,
        metavar="DIR",
        help="write the whole model as ONNX graphs + captioner.json to DIR (docs/onnx.md)",
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=VARIANTS,
        help=f"ONNX variants to write (default: {' '.join(VARIANTS)})",
    )
    parser.add_argument(
        "--web",
        type=Path,
        metavar="DIR",
        help="write a static site that captions in the browser (the built page + the int8 ONNX "
        "model) to DIR (docs/serving.md)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    _check_arguments(args)
    source = _model_source(args)
    try:
        if isinstance(source, Path):
            _write_site(args.web, source)
        else:
            _write(source, args)
    except OSError as error:  # a full disk, a folder made read-only meanwhile
        where = f" {error.filename}" if error.filename else ""
        print(f"captioner: export: cannot write{where}: {error.strerror or error}", file=sys.stderr)
        return 1
    return 0


def _check_arguments(args: argparse.Namespace) -> None:
    from captioner.cli import UsageError

    if args.output is None and args.onnx is None and args.web is None:
        raise UsageError(
            "export: give an output folder to re-save the model, --onnx DIR or --web DIR"
        )
    if args.half and args.output is None:
        raise UsageError("export: --half applies to the re-saved folder (OUTPUT); none given")
    if args.variants and args.onnx is None:
        raise UsageError("export: --variants applies to --onnx DIR; none given")
    for flag, folder in (("OUTPUT", args.output), ("--onnx", args.onnx), ("--web", args.web)):
        if folder is not None and folder.exists() and not folder.is_dir():
            raise UsageError(f"export: {flag} {folder} is a file: give a folder")
    if args.output is not None:
        _check_model_folder(args.output)


def _model_source(args: argparse.Namespace) -> CaptionModel | Path:
    """The PyTorch model, or, when a site is all that is asked, the model's folder if it has
    the int8 graphs the site copies. Anything else needs the training extra: a UsageError says
    so when it is missing, before any work (for a site, once the model's folder is found)."""
    from captioner.cli.extras import require_training_extra
    from captioner.hub import resolve_model_dir
    from captioner.onnx.web import has_web_graphs

    site_only = args.output is None and args.onnx is None
    if not site_only:
        require_training_extra("export")  # before fetching the model
    directory = resolve_model_dir(args.model)
    if site_only:
        if has_web_graphs(directory):
            return directory
        require_training_extra("export", f"{directory} has no int8 ONNX graphs for --web to copy")
    from captioner.torch_model import CaptionModel

    return CaptionModel.from_pretrained(directory)


def _write(model: CaptionModel, args: argparse.Namespace) -> None:
    import torch

    if args.output is not None:
        model.save_pretrained(args.output, dtype=torch.float16 if args.half else None)
        print(f"saved {args.output} ({_megabytes(args.output):.1f} MB)")
    if args.onnx is not None:
        with _onnx_errors("--onnx"):
            _export_onnx(model, args.onnx, args.variants or VARIANTS)
        print(f"saved {args.onnx} ({_megabytes(args.onnx):.1f} MB)")
    if args.web is not None:
        _write_site(args.web, model)


def _write_site(directory: Path, model: CaptionModel | Path) -> None:
    """The site of `model`, or of the int8 graphs in the model folder `model`."""
    from captioner.onnx.web import site_size, write_site, write_site_from_export

    with _onnx_errors("--web"):
        if isinstance(model, Path):
            write_site_from_export(model, directory)
        else:
            write_site(model, directory)
    print(f"saved {directory}: a static site of {site_size(directory) / 1e6:.1f} MB")


def _export_onnx(model: CaptionModel, directory: Path, variants: Sequence[str]) -> None:
    """ONNX graphs + captioner.json built beside `directory` and moved into it: a file there
    that an earlier export did not write is never replaced (one in the way is refused)."""
    from captioner.onnx.export import export_onnx
    from captioner.onnx.web import install_export, scratch_beside

    ours = _onnx_files(directory)
    with scratch_beside(directory) as built:
        export_onnx(model, built, variants)
        install_export(built, directory, ours)


def _onnx_files(directory: Path) -> set[str] | None:
    """The files an earlier ONNX export wrote in `directory` (named in its manifest; for an
    export without one, the description, the graphs it names, the config and vocabulary); None
    when the folder is new or empty."""
    from captioner.hub import CONFIG_FILE, DESCRIPTION_FILE, TOKENIZER_FILE
    from captioner.onnx.web import files_written

    if not directory.is_dir() or not any(directory.iterdir()):
        return None
    if (written := files_written(directory)) is not None:
        return written
    try:
        description = json.loads((directory / DESCRIPTION_FILE).read_text())
        files = {name for files in description["variants"].values() for name in files.values()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return set()  # not an export's folder: every file in it is the user's
    return {DESCRIPTION_FILE, CONFIG_FILE, TOKENIZER_FILE, *files}


def _check_model_folder(directory: Path) -> None:
    """UsageError for a folder whose config, weights or tokenizer files are not a saved
    captioner model's: re-saving would replace them."""
    from captioner.cli import UsageError
    from captioner.config import CaptionerConfig
    from captioner.hub import CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE

    names = (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE)
    present = [name for name in names if (directory / name).exists()]
    if not present:
        return
    try:
        saved = json.loads((directory / CONFIG_FILE).read_text())
        CaptionerConfig.from_dict(saved)
        if not {"encoder", "decoder"} <= set(saved):
            raise ValueError("not a captioner config")
    except Exception:  # noqa: BLE001 (any failure: not a captioner model's config)
        raise UsageError(
            f"export: {directory / present[0]} exists and is not part of a saved captioner "
            "model: give a new or empty folder"
        ) from None


@contextlib.contextmanager
def _onnx_errors(flag: str) -> Iterator[None]:
    """A missing ONNX package or a model the export cannot take, as one usage line."""
    from captioner.cli import UsageError

    try:
        yield
    except ImportError as error:
        raise UsageError(
            f"export: {flag} needs onnx, the training extra (pip install 'captioner[train]'): {error}"
        ) from None
    except ValueError as error:
        raise UsageError(f"export: {error}") from None


def _megabytes(directory: Path) -> float:
    return sum(p.stat().st_size for p in directory.iterdir() if p.is_file()) / 1e6
