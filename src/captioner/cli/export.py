"""`captioner export`: re-save a model (e.g. in half precision), or export it as ONNX."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from pathlib import Path

from captioner.runtime.onnx import VARIANTS


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
        help="write the whole model as ONNX graphs + captioner.json to DIR (README: 'Exported "
        "model (ONNX)')",
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
        "model) to DIR (README: 'Run it in the browser')",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from captioner.cli.extras import require_training_extra

    require_training_extra("export")  # before any work or import of the extra
    import torch

    from captioner.cli import UsageError
    from captioner.torch_model import CaptionModel

    if args.output is None and args.onnx is None and args.web is None:
        raise UsageError(
            "export: give an output folder to re-save the model, --onnx DIR or --web DIR"
        )
    if args.half and args.output is None:
        raise UsageError("export: --half applies to the re-saved folder (OUTPUT); none given")
    if args.variants and args.onnx is None:
        raise UsageError("export: --variants applies to --onnx DIR; none given")
    model = CaptionModel.from_pretrained(args.model)
    if args.output is not None:
        model.save_pretrained(args.output, dtype=torch.float16 if args.half else None)
        print(f"saved {args.output} ({_megabytes(args.output):.1f} MB)")
    if args.onnx is not None:
        from captioner.onnx.export import export_onnx

        with _onnx_errors("--onnx"):
            export_onnx(model, args.onnx, args.variants or VARIANTS)
        print(f"saved {args.onnx} ({_megabytes(args.onnx):.1f} MB)")
    if args.web is not None:
        from captioner.onnx.web import site_size, write_site

        with _onnx_errors("--web"):
            write_site(model, args.web)
        print(f"saved {args.web}: a static site of {site_size(args.web) / 1e6:.1f} MB")
    return 0


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
