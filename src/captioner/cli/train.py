"""`captioner train`: train a captioner (Lightning)."""

from __future__ import annotations

import argparse
import json
import sys


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("train", help="train a captioner (Lightning)")
    parser.add_argument("--preset", default="flickr8k-effnet", help="named settings to start from")
    parser.add_argument("--data", help="dataset folder or file")
    parser.add_argument("--output-dir", help="where checkpoints, logs and best/ go")
    parser.add_argument(
        "--resume", action="store_true", help="continue from output-dir's last.ckpt"
    )
    parser.add_argument("--wandb", action="store_true", help="log to Weights & Biases")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any TrainConfig field, e.g. epochs=5 or decoder.n_layers=4 (JSON values)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
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
