"""`captioner eval`: score a model on a dataset split."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("eval", help="score a model on a dataset split")
    parser.add_argument(
        "--model", help="model folder, hub id or wandb: artifact (default: bundled)"
    )
    parser.add_argument("--data", required=True, help="dataset folder or file")
    parser.add_argument("--split", default="dev")
    parser.add_argument("--beam", type=int, default=3)
    parser.add_argument("--limit", type=int, help="only the first N images")
    parser.add_argument("--cache-dir", default="cache")
    parser.add_argument("--predictions", type=Path, help="file for per-image predictions (JSONL)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from captioner.data import load_records
    from captioner.evaluation.evaluate import evaluate, save_predictions
    from captioner.model import Captioner

    model = Captioner.from_pretrained(args.model)
    records = load_records(args.data, args.split)[: args.limit]
    if not records:
        print(f"captioner: no images in split {args.split!r} of {args.data}", file=sys.stderr)
        return 2
    scores, predictions = evaluate(model, records, beam_size=args.beam, cache_dir=args.cache_dir)
    predictions_path = args.predictions or Path(f"predictions-{args.split}.jsonl")
    save_predictions(predictions_path, predictions, records)
    if args.json:
        print(json.dumps(scores))
    else:
        for name, value in scores.items():
            shown = (
                "n/a (Java not found)"
                if value is None
                else (f"{value:.4f}" if isinstance(value, float) else value)
            )
            print(f"{name:>15}: {shown}")
        print(f"predictions saved to {predictions_path}", file=sys.stderr)
    return 0
