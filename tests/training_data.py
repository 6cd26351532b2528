"""A tiny generated captioning dataset, a tiny training config and a stand-in for a cluster's
SIGTERM, shared by the training tests."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
from lightning.pytorch.callbacks import Callback
from PIL import Image

from captioner.training.config import TrainConfig, preset

WORDS = ["red", "green", "blue", "yellow"]
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 200, 40),
    "blue": (30, 40, 220),
    "yellow": (230, 220, 30),
}


def make_colour_dataset(root: Path) -> Path:
    """16 flat-colour images (4 colours) with captions naming the colour; one corrupt file.
    Images 0-11 are `train`, 12-15 `dev`."""
    (root / "images").mkdir(parents=True)
    lines = []
    for i in range(16):
        word = WORDS[i % 4]
        noise = np.random.default_rng(i).integers(0, 30, (40, 40, 3))
        pixels = np.clip(np.array(COLOURS[word]) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"{i}.png")
        captions = [f"a {word} square", f"a picture that is {word}", f"{word} all over"]
        split = "dev" if i >= 12 else "train"
        lines.append(
            {"image": f"images/{i}.png", "image_id": str(i), "split": split, "captions": captions}
        )
    (root / "images" / "broken.png").write_bytes(b"not a png")
    lines.append(
        {
            "image": "images/broken.png",
            "image_id": "broken",
            "split": "train",
            "captions": ["a red square"],
        }
    )
    (root / "captions.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    return root


# The tiny model, as overrides of the Flickr8k preset.
TINY_SETTINGS = {
    "encoder.name": "efficientnet-lite0",
    "encoder.trained_blocks": 0,  # the tests of trained blocks ask for them
    "decoder.d_model": 32,
    "decoder.n_heads": 2,
    "decoder.n_layers": 1,
    "decoder.dropout": 0.0,
    "decoder.max_length": 12,
    "validation_generation.max_new_tokens": 11,
    "epochs": 2,
    "batch_size": 4,
    "warmup_steps": 2,
    "learning_rate": 3e-3,
    "min_token_count": 1,
    "average_decay": None,  # the preset's spans far more steps than these runs take
    "accelerator": "cpu",
    "devices": 1,
}


def tiny_config(dataset: Path, tmp_path: Path, **overrides) -> TrainConfig:
    values: dict = {
        "data": str(dataset),
        "output_dir": str(tmp_path / "run"),
        "cache_dir": str(tmp_path.parent / "shared-cache"),
    }
    for key, value in TINY_SETTINGS.items():
        *groups, name = key.split(".")
        target = values
        for group in groups:
            target = target.setdefault(group, {})
        target[name] = value
    for key, value in overrides.items():
        if isinstance(value, dict):
            values[key] = {**values.get(key, {}), **value}
        else:
            values[key] = value
    return preset("flickr8k-effnet", **values)


class TerminateAtStep(Callback):
    """Sends this process SIGTERM during a step, as a cluster does to a preempted job."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *_) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)
