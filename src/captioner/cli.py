"""The `captioner` command line: caption, features, train, eval, serve."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from captioner.hub import ModelNotFoundError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="captioner", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    caption = commands.add_parser("caption", help="caption image files")
    caption.add_argument("images", nargs="+", help="image files")
    caption.add_argument(
        "--model", help="model folder, hub id or wandb: artifact (default: bundled)"
    )
    caption.add_argument("--beam", type=int, default=None, help="beam size (1 = greedy)")
    caption.add_argument("--max-tokens", type=int, default=None, help="longest caption in tokens")
    caption.add_argument("--json", action="store_true", help="one JSON object per image and line")
    caption.add_argument("--attention-dir", type=Path, help="save per-word heatmaps (PNG) here")
    caption.add_argument("--batch-size", type=int, default=16)
    caption.set_defaults(run=_caption)

    serve = commands.add_parser("serve", help="serve the web page and the JSON API")
    serve.add_argument("--model", help="model folder, hub id or wandb: artifact (default: bundled)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.set_defaults(run=_serve)

    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except ModelNotFoundError as error:
        print(f"captioner: {error}", file=sys.stderr)
        return 2


def _caption(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from captioner.attention import save_token_heatmaps
    from captioner.images import ImageLoadError, load_image
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
                loaded.append(load_image(path))
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


def _serve(args: argparse.Namespace) -> int:
    from captioner.server import serve

    return serve(args)


def _report(args: argparse.Namespace, record: dict) -> None:
    if args.json:
        print(json.dumps(record), flush=True)
    elif "error" in record:
        print(f"{record['image']}: error: {record['error']}", file=sys.stderr, flush=True)
    elif len(args.images) == 1:
        print(record["caption"], flush=True)
    else:
        print(f"{record['image']}\t{record['caption']}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
