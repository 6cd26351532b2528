"""`captioner export`: re-save a model (e.g. in half precision)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("export", help="re-save a model (e.g. in half precision)")
    parser.add_argument("model", help="model folder, hub id or wandb: artifact")
    parser.add_argument("output", type=Path, help="folder to write")
    parser.add_argument("--half", action="store_true", help="store the weights as float16")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from captioner.model import Captioner

    model = Captioner.from_pretrained(args.model)
    model.save_pretrained(args.output, dtype=torch.float16 if args.half else None)
    size = sum(p.stat().st_size for p in args.output.iterdir()) / 1e6
    print(f"saved {args.output} ({size:.1f} MB)")
    return 0
