"""`captioner features`: cache encoder grids for a dataset."""

from __future__ import annotations

import argparse


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("features", help="cache encoder grids for a dataset")
    parser.add_argument("--data", required=True, help="dataset folder or file")
    parser.add_argument("--encoder", default="efficientnet-lite2", help="encoder name")
    parser.add_argument("--encoder-source", help="hub id or folder (CLIP)")
    parser.add_argument("--split", action="append", help="splits to encode (default: all)")
    parser.add_argument("--cache-dir", default="cache")
    parser.add_argument("--num-workers", type=int, default=1)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from captioner.config import EncoderConfig
    from captioner.data import load_records
    from captioner.encoders import build_encoder
    from captioner.features import build_cache
    from captioner.training.data import image_source

    records = (
        load_records(args.data)
        if not args.split
        else [r for split in args.split for r in load_records(args.data, split)]
    )
    encoder = build_encoder(EncoderConfig(args.encoder, args.encoder_source))
    cache = build_cache(
        encoder, [image_source(r) for r in records], args.cache_dir, num_workers=args.num_workers
    )
    print(f"{len(cache)} images cached in {cache.directory} ({len(cache.failed)} unreadable)")
    return 0
