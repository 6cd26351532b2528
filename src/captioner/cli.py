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

    features = commands.add_parser("features", help="cache encoder grids for a dataset")
    features.add_argument("--data", required=True, help="dataset folder or file")
    features.add_argument("--encoder", default="efficientnet-lite2", help="encoder name")
    features.add_argument("--encoder-source", help="hub id or folder (CLIP)")
    features.add_argument("--split", action="append", help="splits to encode (default: all)")
    features.add_argument("--cache-dir", default="cache")
    features.add_argument("--num-workers", type=int, default=1)
    features.set_defaults(run=_features)

    train = commands.add_parser("train", help="train a captioner (Lightning)")
    train.add_argument("--preset", default="flickr8k-effnet", help="named settings to start from")
    train.add_argument("--data", help="dataset folder or file")
    train.add_argument("--output-dir", help="where checkpoints, logs and best/ go")
    train.add_argument("--resume", action="store_true", help="continue from output-dir's last.ckpt")
    train.add_argument("--wandb", action="store_true", help="log to Weights & Biases")
    train.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any TrainConfig field, e.g. epochs=5 or decoder.n_layers=4 (JSON values)",
    )
    train.set_defaults(run=_train)

    export = commands.add_parser("export", help="re-save a model (e.g. in half precision)")
    export.add_argument("model", help="model folder, hub id or wandb: artifact")
    export.add_argument("output", type=Path, help="folder to write")
    export.add_argument("--half", action="store_true", help="store the weights as float16")
    export.set_defaults(run=_export)

    evaluate = commands.add_parser("eval", help="score a model on a dataset split")
    evaluate.add_argument(
        "--model", help="model folder, hub id or wandb: artifact (default: bundled)"
    )
    evaluate.add_argument("--data", required=True, help="dataset folder or file")
    evaluate.add_argument("--split", default="dev")
    evaluate.add_argument("--beam", type=int, default=3)
    evaluate.add_argument("--limit", type=int, help="only the first N images")
    evaluate.add_argument("--cache-dir", default="cache")
    evaluate.add_argument("--predictions", type=Path, help="file for per-image predictions (JSONL)")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.set_defaults(run=_eval)

    serve = commands.add_parser("serve", help="serve the web page and the JSON API")
    serve.add_argument("--model", help="model folder, hub id or wandb: artifact (default: bundled)")
    # Unset flags stay None so that ServerSettings keeps the one set of defaults.
    serve.add_argument("--host", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default: 8000)")
    serve.add_argument("--max-upload-mb", type=float, help="largest upload (default: 10)")
    serve.add_argument("--max-pixels", type=int, help="largest decoded image (default: 40M)")
    serve.add_argument(
        "--batching",
        action=argparse.BooleanOptionalAction,
        help="gather concurrent requests into micro-batches (default: on)",
    )
    serve.add_argument("--max-batch-size", type=int, help="images per model call (default: 8)")
    serve.add_argument("--batch-wait-ms", type=float, help="wait for a batch to fill (default: 5)")
    serve.add_argument("--page-dir", type=Path, help="the built page (default: frontend/dist)")
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


def _features(args: argparse.Namespace) -> int:
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


def _train(args: argparse.Namespace) -> int:
    from captioner.training.config import preset
    from captioner.training.run import train

    overrides: dict = {}
    for item in args.set:
        key, _, value = item.partition("=")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value  # bare strings need no quotes
        *parents, leaf = key.split(".")
        target = overrides
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = parsed
    for key in ("data", "output_dir"):
        if getattr(args, key):
            overrides[key] = getattr(args, key)
    if args.wandb:
        overrides["wandb"] = True
    config = preset(args.preset, **overrides)
    if args.resume and not args.output_dir:
        print("captioner: --resume needs --output-dir", file=sys.stderr)
        return 2
    best = train(config, resume=args.resume)
    print(f"best model: {best}")
    return 0


def _export(args: argparse.Namespace) -> int:
    import torch

    from captioner.model import Captioner

    model = Captioner.from_pretrained(args.model)
    model.save_pretrained(args.output, dtype=torch.float16 if args.half else None)
    size = sum(p.stat().st_size for p in args.output.iterdir()) / 1e6
    print(f"saved {args.output} ({size:.1f} MB)")
    return 0


def _eval(args: argparse.Namespace) -> int:
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
