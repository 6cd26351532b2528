"""`captioner train`: train a captioner (Lightning)."""

from __future__ import annotations

import argparse
import signal
import sys

from captioner.cache import FEATURES_DIR_HELP
from captioner.training.config import DEFAULT_PRESET, PRESETS, TrainConfig


def add_parser(commands: argparse._SubParsersAction) -> None:
    presets = ", ".join(PRESETS)
    parser = commands.add_parser(
        "train",
        help="train a captioner (Lightning)",
        description="Train a captioner: cache the encoder's grids, train the decoder, validate "
        "on the dev split after every epoch, and export the best model to OUTPUT_DIR/best/.",
        epilog=f"presets: {presets}. Every TrainConfig field can be set with --set; "
        "see src/captioner/training/config.py.",
    )
    parser.add_argument(
        "--preset",
        metavar="NAME",
        help=f"named settings to start from: {presets} (default: {DEFAULT_PRESET}; with "
        "--resume, the run's own)",
    )
    parser.add_argument("--data", help="dataset folder or file (any format captioner.data reads)")
    parser.add_argument(
        "--output-dir",
        help=f"where checkpoints, logs and best/ go (default: {TrainConfig.output_dir})",
    )
    parser.add_argument(
        "--cache-dir",
        help=f"where the encoder's grids of the photos are kept ({FEATURES_DIR_HELP})",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        default=None,
        help="continue the run in --output-dir exactly where it stopped, with its saved "
        "settings (other flags may only repeat them)",
    )
    parser.add_argument(
        "--wandb",
        action="store_true",
        default=None,
        help="log to Weights & Biases (WANDB_MODE=offline works without a network)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set any TrainConfig field, typed as the field is, e.g. epochs=5, "
        "decoder.n_layers=4, mirror_images=false, average_decay=none (repeatable)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from captioner.cli import UsageError
    from captioner.launcher import launcher_rank
    from captioner.training.run import TrainingSetupError, train

    config = training_config(args)
    try:
        best = train(config, resume=bool(args.resume))
    except TrainingSetupError as error:
        raise UsageError(str(error)) from None
    except SIGTERMException:  # last.ckpt holds the step it came at (or the last epoch's end)
        print(
            f"captioner: stopped by SIGTERM; continue with: captioner train --output-dir "
            f"{config.output_dir} --resume",
            file=sys.stderr,
        )
        return 128 + signal.SIGTERM  # what a shell reports for a process SIGTERM ended
    if launcher_rank() == 0:  # each process of a multi-process run returns here
        print(f"best model: {best}")
    return 0


def training_config(args: argparse.Namespace) -> TrainConfig:
    """The run's settings from the preset (or the resumed run's own), the flags and every
    `--set`, checked: a UsageError says what is wrong before anything is read or written."""
    from captioner.cli import UsageError
    from captioner.config import parse_settings
    from captioner.training.config import preset, resumed_config

    try:
        overrides = parse_settings(TrainConfig, args.set)
    except ValueError as error:
        raise UsageError(f"--set {error}") from None
    flags = {
        "data": args.data,
        "output_dir": args.output_dir,
        "cache_dir": args.cache_dir,
        "wandb": args.wandb,
    }
    overrides.update({key: value for key, value in flags.items() if value is not None})
    if args.resume and not args.output_dir:
        raise UsageError("--resume needs --output-dir: the folder of the run to continue")
    try:
        if args.resume:
            return resumed_config(args.output_dir, args.preset, overrides)
        config = preset(args.preset or DEFAULT_PRESET, **overrides)
    except ValueError as error:
        raise UsageError(str(error)) from None
    if config.init_from:
        _check_model_settings(config.init_from, overrides)
    return config


def _check_model_settings(init_from: str, overrides: dict) -> None:
    """A run from `init_from` trains that model's encoder and decoder as they are: an
    `encoder.*` or `decoder.*` setting that differs from them would be silently ignored, so it
    is a UsageError (one that repeats them is fine)."""
    from captioner.cli import UsageError
    from captioner.hub import load_config, resolve_model_dir
    from captioner.training.config import contradictions

    asked = {part: overrides[part] for part in ("encoder", "decoder") if part in overrides}
    if not asked:
        return
    start = load_config(resolve_model_dir(init_from)).to_dict()
    if clash := contradictions(start, asked):
        key = clash[0]
        part, name = key.split(".", 1)
        raise UsageError(
            f"--set {key}={asked[part][name]!r} contradicts the model init_from names "
            f"({key}={start[part][name]!r}): a run from init_from trains that model's encoder "
            "and decoder as they are; leave it out"
        )
