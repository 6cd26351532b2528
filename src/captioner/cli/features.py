"""`captioner features`: cache encoder grids for a dataset."""

from __future__ import annotations

import argparse
from typing import Any

from captioner.cache import ENCODE_WORKERS, FEATURES_DIR_HELP
from captioner.config import EncoderConfig


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "features",
        help="cache encoder grids for a dataset",
        description="Run the frozen encoder once over a dataset's images and keep the grids "
        "(fp16, memory-mapped) for train and eval; images already cached are skipped.",
    )
    parser.add_argument("--data", required=True, help="dataset folder or file")
    parser.add_argument(
        "--encoder", help=f"encoder name (default: {EncoderConfig.name}, as `train` uses)"
    )
    parser.add_argument("--encoder-source", help="hub id or folder of the weights (CLIP)")
    parser.add_argument(
        "--trained-blocks",
        type=int,
        metavar="N",
        help="EfficientNet-Lite's last N blocks train with the decoder "
        "(encoder.trained_blocks), so what enters them is cached instead of the grid "
        "(default: as `train` uses: 1 for its default encoder, else 0)",
    )
    parser.add_argument(
        "--split", action="append", help="a split to encode, repeatable (default: every split)"
    )
    parser.add_argument("--cache-dir", help=f"cache folder ({FEATURES_DIR_HELP})")
    parser.add_argument(
        "--num-workers",
        type=int,
        help=f"processes decoding images while the encoder runs (default: {ENCODE_WORKERS})",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from captioner.cli import UsageError
    from captioner.data import load_records
    from captioner.encoders import build_encoder
    from captioner.features import build_cache, image_source

    if args.num_workers is not None and args.num_workers < 0:
        raise UsageError(f"--num-workers must be 0 or more, got {args.num_workers}")
    try:
        records = (
            load_records(args.data)
            if not args.split
            else [r for split in args.split for r in load_records(args.data, split)]
        )
    except (OSError, ValueError) as error:
        raise UsageError(str(error)) from None
    if not records:
        raise UsageError(f"no records in {args.data} (splits: {', '.join(args.split or [])})")
    try:
        encoder = build_encoder(encoder_config(args))
    except ValueError as error:
        raise UsageError(str(error)) from None
    cache = build_cache(
        encoder,
        [image_source(r) for r in records],
        **_given(cache_root=args.cache_dir, num_workers=args.num_workers),
    )
    print(f"{len(cache)} images cached in {cache.directory} ({len(cache.failed)} unreadable)")
    return 0


def encoder_config(args: argparse.Namespace) -> EncoderConfig:
    """The encoder `captioner train` would cache with: its default preset's, or the one named."""
    from captioner.training.config import DEFAULT_PRESET, preset

    trained = preset(DEFAULT_PRESET).encoder
    name = args.encoder or trained.name
    blocks = args.trained_blocks
    if blocks is None:
        blocks = trained.trained_blocks if name == trained.name else 0
    return EncoderConfig(name, args.encoder_source, blocks).validate()


def _given(**options: Any) -> dict[str, Any]:
    """The options whose flag was given: the others keep the library's default."""
    return {key: value for key, value in options.items() if value is not None}
