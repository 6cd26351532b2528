"""`captioner eval`: score a model on a dataset split."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from captioner.cache import FEATURES_DIR_HELP

DEFAULT_SPLIT = "dev"  # what `captioner eval` scores unless told otherwise


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "eval",
        help="score a model on a dataset split",
        description="Caption a split and score it the coco-caption way: BLEU-1..4, METEOR "
        "(needs Java), ROUGE-L, CIDEr-D, and teacher-forced token accuracy; with --clip, "
        "CLIPScore and RefCLIPScore too.",
    )
    parser.add_argument(
        "--model", help="model folder, hub id or wandb: artifact (default: the bundled model)"
    )
    parser.add_argument("--data", required=True, help="dataset folder or file")
    parser.add_argument("--split", help=f"split to score (default: {DEFAULT_SPLIT})")
    parser.add_argument(
        "--beam", type=int, help="beam size (default: the model's own, from its config.json)"
    )
    parser.add_argument("--limit", type=int, help="only the first N images (default: all)")
    parser.add_argument("--cache-dir", help=f"feature cache folder ({FEATURES_DIR_HELP})")
    parser.add_argument(
        "--predictions",
        type=Path,
        help="file for per-image predictions, JSONL (default: predictions-SPLIT.jsonl)",
    )
    parser.add_argument(
        "--clip",
        metavar="MODEL",
        help="also score CLIPScore and RefCLIPScore (Hessel et al. 2021) with this CLIP: a "
        "Hugging Face hub id such as openai/clip-vit-base-patch32, or a saved folder",
    )
    parser.add_argument(
        "--clip-rerank",
        action="store_true",
        help="also re-rank the final beams by CLIPScore and score the winners (needs --clip "
        "and a beam of 2 or more); both sets of scores are printed",
    )
    parser.add_argument("--json", action="store_true", help="print the scores as one JSON object")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from captioner.cli.extras import require_training_extra

    require_training_extra("eval")  # before any work or import of the extra
    from captioner.cli import UsageError
    from captioner.data import SplitConfig, load_records
    from captioner.evaluation.evaluate import evaluate, save_predictions
    from captioner.torch_model import CaptionModel

    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit must be 1 or more, got {args.limit}")
    split = args.split or DEFAULT_SPLIT
    model = CaptionModel.from_pretrained(args.model)
    try:  # data without splits is split as it was for training the model
        splits = SplitConfig.from_metadata(model.config.metadata)
        records = load_records(args.data, split, splits=splits)[: args.limit]
    except (OSError, ValueError) as error:
        raise UsageError(str(error)) from None
    if not records:
        raise UsageError(f"no images in split {split!r} of {args.data}")
    if args.clip_rerank and args.clip is None:
        raise UsageError("--clip-rerank needs --clip MODEL: the CLIP that scores the beams")
    clip = None
    if args.clip is not None:
        from captioner.evaluation.clipscore import CLIPScorer

        try:
            clip = CLIPScorer(args.clip)
        except (OSError, ValueError) as error:  # no such folder or hub id, not a CLIP model
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else error
            raise UsageError(
                f"--clip {args.clip}: cannot load a CLIP model: {first_line}"
            ) from None
    options = {
        "beam_size": args.beam,
        "cache_dir": args.cache_dir,
        "clip": clip,
        "clip_rerank": args.clip_rerank,
    }
    try:
        scores, predictions = evaluate(
            model, records, **{key: value for key, value in options.items() if value is not None}
        )
    except ValueError as error:  # an out-of-range --beam, or no readable image
        raise UsageError(str(error)) from None
    predictions_path = args.predictions or Path(f"predictions-{split}.jsonl")
    save_predictions(predictions_path, predictions, records)
    if args.json:
        print(json.dumps(scores))
    else:
        rows = [(name, value) for name, value in scores.items() if not isinstance(value, dict)]
        for group, values in scores.items():  # clip_reranked: the same metrics, re-ranked
            if isinstance(values, dict):
                rows += [(f"{group}.{name}", value) for name, value in values.items()]
        for name, value in rows:
            shown = (
                "n/a (Java not found)"
                if value is None
                else (f"{value:.4f}" if isinstance(value, float) else value)
            )
            print(f"{name:>15}: {shown}")
        print(f"predictions saved to {predictions_path}", file=sys.stderr)
    return 0
