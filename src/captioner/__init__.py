"""captioner: image captioning you can train, evaluate and serve yourself."""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from captioner.config import CaptionerConfig, DecoderConfig, EncoderConfig, GenerationConfig
from captioner.images import ImageInput, ImageLoadError
from captioner.model import Caption, Captioner
from captioner.tokenizer import CaptionTokenizer

__version__ = "0.1.0"


@lru_cache(maxsize=4)
def load(source: str | None = None) -> Captioner:
    """A model loaded once per source (the bundled one by default) and reused."""
    return Captioner.from_pretrained(source)


def caption(
    images: ImageInput | Iterable[ImageInput],
    model: str | None = None,
    num_beams: int | None = None,
    return_attention: bool = False,
    **options: Any,
) -> list[Caption]:
    """Caption images with the bundled model (or `model`: folder, hub id, wandb: artifact);
    `options` are `Captioner.caption`'s (batch_size, GenerationConfig fields)."""
    return load(model).caption(
        images, num_beams=num_beams, return_attention=return_attention, **options
    )


__all__ = [
    "Caption",
    "CaptionTokenizer",
    "Captioner",
    "CaptionerConfig",
    "DecoderConfig",
    "EncoderConfig",
    "GenerationConfig",
    "ImageLoadError",
    "caption",
    "load",
]
