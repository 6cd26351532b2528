"""`captioner eval`: score a model on a dataset split."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from captioner.cache import FEATURES_DIR_HELP
from captioner.cli.flags import GENERATION_FLAGS, Flag, add_command, generation_options

if TYPE_CHECKING:
    from captioner.data import CaptionRecord, SplitConfig
    from captioner.evaluation.clipscore import CLIPScorer

DEFAULT_SPLIT = "dev"  # what `captioner eval` scores unless told otherwise
BEAM_SEARCH_OPTIONS = ("num_beams", "max_new_tokens", "length_penalty", "no_repeat_ngram_size")


FLAGS = (
    Flag(
        "--model", "model folder, hub id or wandb: artifact (default: the bundled model)", type=str
    ),
    Flag("--data", "dataset folder or file", type=str, required=True),
    Flag("--split", f"split to score (default: {DEFAULT_SPLIT})", type=str),
    # Beam search's settings; sampling would make the scores a draw.
    *(flag for flag in GENERATION_FLAGS if flag.dest in BEAM_SEARCH_OPTIONS),
    Flag("--limit", "only the first N images (default: all)", type=int),
    Flag("--cache-dir", f"feature cache folder ({FEATURES_DIR_HELP})", type=str),
    Flag(
        "--predictions",
        "file for per-image predictions, JSONL (default: predictions-SPLIT.jsonl, which is "
        "never written over unless an earlier eval wrote it)",
        type=Path,
    ),
    Flag(
        "--clip",
        "also score CLIPScore and RefCLIPScore (Hessel et al. 2021) with this CLIP: a Hugging "
        "Face hub id such as openai/clip-vit-base-patch32, or a saved folder",
        type=str,
        metavar="MODEL",
    ),
    Flag(
        "--clip-rerank",
        "also re-rank the final beams by CLIPScore and score the winners (needs --clip and "
        "--num-beams 2 or more); both sets of scores are printed",
    ),
    Flag("--json", "print the scores as one JSON object"),
)


def add_parser(commands: argparse._SubParsersAction) -> None:
    description = (
        "Caption a split and score it the coco-caption way: BLEU-1..4, METEOR (needs Java), "
        "ROUGE-L, CIDEr-D, and teacher-forced token accuracy; with --clip, CLIPScore and "
        "RefCLIPScore too."
    )
    add_command(commands, "eval", "score a model on a dataset split", description, FLAGS, run)


def run(args: argparse.Namespace) -> int:
    from captioner.cli import UsageError
    from captioner.data import SplitConfig
    from captioner.evaluation.evaluate import evaluate, save_predictions
    from captioner.torch_model import CaptionModel

    split = args.split or DEFAULT_SPLIT
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit must be 1 or more, got {args.limit}")
    if args.clip_rerank and args.clip is None:
        raise UsageError("--clip-rerank needs --clip MODEL: the CLIP that scores the beams")
    predictions_path = _predictions_path(args.predictions, split)
    model = CaptionModel.from_pretrained(args.model)
    # Data without splits is split as it was for training the model.
    splits = SplitConfig.from_metadata(model.config.metadata)
    records = _records(args.data, split, args.limit, splits)
    clip = None if args.clip is None else _clip_scorer(args.clip)
    options = {
        "options": generation_options(args) or None,
        "cache_dir": args.cache_dir,
        "clip": clip,
        "clip_rerank": args.clip_rerank,
    }
    try:
        scores, predictions = evaluate(
            model, records, **{key: value for key, value in options.items() if value is not None}
        )
    except ValueError as error:  # an out-of-range decoding flag, or no readable image
        raise UsageError(str(error)) from None
    save_predictions(predictions_path, predictions, records)
    if args.json:
        print(json.dumps(scores))
    else:
        _print_scores(scores)
        print(f"predictions saved to {predictions_path}", file=sys.stderr)
    return 0


def _predictions_path(named: Path | None, split: str) -> Path:
    """Where the predictions go, checked before minutes of captioning, not after: a file named
    on the command line is the user's to replace; the default one only where an earlier eval
    wrote it."""
    from captioner.cli import UsageError
    from captioner.evaluation.evaluate import is_predictions_file

    path = named or Path(f"predictions-{split}.jsonl")
    if os.path.isdir(path):
        raise UsageError(f"the predictions file {path} is a folder")
    if not path.parent.is_dir():
        raise UsageError(f"the predictions file's folder {path.parent} does not exist")
    if named is None and os.path.lexists(path) and not is_predictions_file(path):
        raise UsageError(
            f"{path} exists and was not written by captioner eval: move it, or choose another "
            "file with --predictions"
        )
    return path


def _records(data: str, split: str, limit: int | None, splits: SplitConfig) -> list[CaptionRecord]:
    """The split's records, the first `limit` of them where given; a UsageError where none."""
    from captioner.cli import UsageError
    from captioner.data import load_records

    try:
        records = load_records(data, split, splits=splits)[:limit]
    except (OSError, ValueError) as error:
        raise UsageError(str(error)) from None
    if not records:
        raise UsageError(f"no images in split {split!r} of {data}")
    return records


def _clip_scorer(source: str) -> CLIPScorer:
    from captioner.cli import UsageError
    from captioner.evaluation.clipscore import CLIPScorer

    try:
        return CLIPScorer(source)
    except (OSError, ValueError) as error:  # no such folder or hub id, not a CLIP model
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else error
        raise UsageError(f"--clip {source}: cannot load a CLIP model: {first_line}") from None


def _print_scores(scores: dict) -> None:
    """One metric a line; the re-ranked ones (a group of their own) as clip_reranked.NAME."""
    rows = [(name, value) for name, value in scores.items() if not isinstance(value, dict)]
    for group, values in scores.items():
        if isinstance(values, dict):
            rows += [(f"{group}.{name}", value) for name, value in values.items()]
    for name, value in rows:
        shown = (
            "n/a (Java not found)"
            if value is None
            else (f"{value:.4f}" if isinstance(value, float) else value)
        )
        print(f"{name:>15}: {shown}")
