"""A tiny untrained model for the server and end-to-end tests (the real one takes hours to train).

Run as a script, `python tests/tiny_model.py DIR` saves it to DIR for `captioner serve --model DIR`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from captioner import (
    CaptionerConfig,
    CaptionTokenizer,
    DecoderConfig,
    EncoderConfig,
    GenerationConfig,
)
from captioner.torch_model import CaptionModel

CAPTIONS = [
    "a dog runs across the grass .",
    "two children play in the water at the beach .",
    "a man in a red shirt climbs a rock wall .",
    "a girl rides a bike down the street .",
    "a black and white dog jumps over a log .",
]


def build_tiny_model(trained_blocks: int = 0) -> CaptionModel:
    """EfficientNet-Lite0 (its weights ship in a pip package) and a 2-layer, 64-wide decoder;
    with `trained_blocks`, the decoder holds Lite0's last blocks (`EncoderConfig`)."""
    torch.manual_seed(0)
    config = CaptionerConfig(
        encoder=EncoderConfig("efficientnet-lite0", trained_blocks=trained_blocks),
        decoder=DecoderConfig(n_layers=2, d_model=64, n_heads=4),
        generation=GenerationConfig(max_new_tokens=12),  # short captions keep the tests quick
        metadata={"dataset": "none (test model)", "dev_metrics": {"CIDEr": 0.0}},
    )
    return CaptionModel(config, CaptionTokenizer.build_compact(CAPTIONS)).eval()


def save_tiny_model(directory: str | Path) -> Path:
    return build_tiny_model().save_pretrained(directory)


if __name__ == "__main__":
    print(save_tiny_model(sys.argv[1]))
