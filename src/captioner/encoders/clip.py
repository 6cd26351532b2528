"""CLIP's vision tower through Hugging Face `transformers`: the production encoder."""

from __future__ import annotations

import torch

from captioner.encoders.base import ImageEncoder
from captioner.transforms import Preprocess

DEFAULT_CLIP = "openai/clip-vit-base-patch32"

# The statistics CLIP was trained with (OpenAI's preprocessing).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class CLIPEncoder(ImageEncoder):
    """Patch tokens of the last layer (class token dropped): 7x7 of 768 for ViT-B/32."""

    def __init__(self, source: str | None = None):
        super().__init__()
        from transformers import CLIPVisionModel

        self.source = source or DEFAULT_CLIP
        # A hub id or a local folder; the hub is only contacted for ids not yet cached.
        self.net = CLIPVisionModel.from_pretrained(self.source)
        config = self.net.config
        self.name = f"clip:{self.source}"
        self.dim = config.hidden_size
        self.grid_h = self.grid_w = config.image_size // config.patch_size
        self.preprocess = Preprocess(
            crop_size=config.image_size,
            resize_size=config.image_size,
            mean=CLIP_MEAN,
            std=CLIP_STD,
            resample="bicubic",
        )
        self.freeze()

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        hidden = self.net(pixel_values=pixels).last_hidden_state
        return hidden[:, 1:, :]
