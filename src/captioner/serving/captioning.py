"""The two halves of captioning one upload: preparing it (decode and preprocess, on the prepare
pool) and captioning a batch of prepared images (on the model thread)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from captioner.images import DEFAULT_MAX_SIDE, full_size
from captioner.model import Caption, Captioner
from captioner.serving.schemas import CropBox, crop_box


@dataclass(frozen=True)
class Options:
    """What must be equal for two requests to share one model call."""

    num_beams: int
    max_new_tokens: int
    attention: bool


@dataclass(frozen=True)
class PreparedImage:
    pixels: np.ndarray  # (3, crop, crop), normalised
    width: int  # as the client sent it, also when decoded at a reduced scale
    height: int
    crop: CropBox


def prepare_image(
    model: Captioner, data: bytes, max_pixels: int, max_side: int = DEFAULT_MAX_SIDE
) -> PreparedImage:
    """Decode and preprocess an upload; ImageLoadError says what is wrong with it."""
    preprocess = model.preprocess
    image = preprocess.load(data, max_pixels, max_side)
    width, height = full_size(image)
    return PreparedImage(preprocess(image), width, height, crop_box(preprocess, *image.size))


def caption_batch(model: Captioner, options: Options, images: list[PreparedImage]) -> list[Caption]:
    generation = model.generation_config(
        num_beams=options.num_beams, max_new_tokens=options.max_new_tokens
    )
    features = model.encode(np.stack([image.pixels for image in images]))
    return model.generate_from_features(features, generation, options.attention)
