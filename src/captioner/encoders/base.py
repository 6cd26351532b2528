"""The one interface every image encoder implements: images in, a grid of patch embeddings out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from captioner.transforms import Preprocess

if TYPE_CHECKING:
    from captioner.decoder import ImageStage


@dataclass
class EncoderOutput:
    """Patch embeddings (batch, grid_h * grid_w, dim), row-major over the grid."""

    tokens: torch.Tensor
    grid_h: int
    grid_w: int


class ImageEncoder(nn.Module):
    """A frozen feature extractor. Subclasses set the attributes below and implement `features`."""

    name: str
    dim: int
    grid_h: int
    grid_w: int
    preprocess: Preprocess
    # Its last layers trained with the decoder (`trainable_top`), where the grid stops before
    # them: `EncoderConfig.trained_blocks`.
    trained_blocks: int = 0

    @property
    def cache_key(self) -> str:
        """Names the encoder and its preprocessing: cached features are valid only under it."""
        return f"{self.name}|{self.preprocess.key}"

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(batch, 3, H, W) normalised pixels to (batch, grid_h * grid_w, dim)."""
        raise NotImplementedError

    def trainable_top(self) -> ImageStage:
        """A trainable copy of the layers above `features`' grid, for the decoder to train
        (`CaptionDecoder(image_stage=...)`); only encoders with `trained_blocks` have one."""
        raise ValueError(f"the {self.name} encoder has no trained blocks")

    def freeze(self) -> ImageEncoder:
        self.eval()
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        return self

    def train(self, mode: bool = True) -> ImageEncoder:
        # Frozen encoders stay in eval mode (batch norm statistics, dropout) whatever the parent does.
        return super().train(False)

    @torch.inference_mode()
    def forward(self, pixels: torch.Tensor | np.ndarray) -> EncoderOutput:
        """`pixels` as `preprocess` makes them (numpy), or already a tensor on a device."""
        if isinstance(pixels, np.ndarray):
            pixels = torch.from_numpy(pixels)
        return EncoderOutput(self.features(pixels), self.grid_h, self.grid_w)
