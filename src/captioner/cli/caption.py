"""`captioner caption`: caption image files."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("caption", help="caption image files")
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument(
        "--model", help="model folder, hub id or wandb: artifact (default: bundled)"
    )
    parser.add_argument("--beam", type=int, default=None, help="beam size (1 = greedy)")
    parser.add_argument("--max-tokens", type=int, default=None, help="longest caption in tokens")
    parser.add_argument("--json", action="store_true", help="one JSON object per image and line")
    parser.add_argument("--attention-dir", type=Path, help="save per-word heatmaps (PNG) here")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from captioner.attention import save_token_heatmaps
    from captioner.images import ImageLoadError
    from captioner.model import Captioner

    model = Captioner.from_pretrained(args.model)
    options = {}
    if args.beam is not None:
        options["beam_size"] = args.beam
    if args.max_tokens is not None:
        options["max_new_tokens"] = args.max_tokens
    want_attention = args.attention_dir is not None
    failures = 0
    progress = tqdm(
        total=len(args.images), unit="img", disable=len(args.images) < 2, file=sys.stderr
    )
    for start in range(0, len(args.images), args.batch_size):
        loaded, paths = [], []
        for path in args.images[start : start + args.batch_size]:
            try:
                loaded.append(model.encoder.preprocess.load(path))
                paths.append(path)
            except ImageLoadError as error:
                failures += 1
                _report(args, {"image": path, "error": str(error)})
                progress.update(1)
        if not loaded:
            continue
        captions = model.caption(loaded, return_attention=want_attention, **options)
        for path, image, result in zip(paths, loaded, captions):
            record = {"image": path, "caption": result.text, "tokens": result.tokens}
            if want_attention:
                folder = args.attention_dir / Path(path).stem
                save_token_heatmaps(image, result.tokens, result.attention, folder)
                record["attention_dir"] = str(folder)
            _report(args, record)
            progress.update(1)
    progress.close()
    return 1 if failures else 0


def _report(args: argparse.Namespace, record: dict) -> None:
    if args.json:
        print(json.dumps(record), flush=True)
    elif "error" in record:
        print(f"{record['image']}: error: {record['error']}", file=sys.stderr, flush=True)
    elif len(args.images) == 1:
        print(record["caption"], flush=True)
    else:
        print(f"{record['image']}\t{record['caption']}", flush=True)
