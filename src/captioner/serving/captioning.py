"""Captioning a batch of uploads on the model thread, each already read by
`Preprocess.prepare` on the prepare pool."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from captioner.model import Caption, Captioner
from captioner.transforms import PreparedImage


@dataclass(frozen=True)
class Options:
    """What must be equal for two requests to share one model call."""

    num_beams: int
    max_new_tokens: int
    attention: bool


def caption_batch(model: Captioner, options: Options, images: list[PreparedImage]) -> list[Caption]:
    generation = model.generation_config(
        num_beams=options.num_beams, max_new_tokens=options.max_new_tokens
    )
    features = model.encode(np.stack([image.pixels for image in images]))
    return model.generate_from_features(features, generation, options.attention)
