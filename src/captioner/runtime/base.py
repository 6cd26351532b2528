"""The interface every runtime implements, in numpy: images in, one decoding step at a time out.

`captioner.decoding` drives any runtime through it, so greedy, beam search and sampling are
written once (the page's `generation.ts` mirrors that loop).

`runtime` names, as `Captioner.from_pretrained` takes them:
- "auto" (the default): the exported int8 graphs in ONNX Runtime: a folder's own graphs
  (`captioner.json`), else graphs exported once from its PyTorch weights into the cache
  (needs `captioner[train]`).
- "onnx": the same.
- "onnx-fp32": the float32 graphs (the same captions as PyTorch).
- "torch": the PyTorch model itself (needs `captioner[train]`).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from captioner.transforms import Preprocess

RUNTIMES = ("auto", "onnx", "onnx-fp32", "torch")
DEFAULT_RUNTIME = "auto"


def check_runtime(runtime: str) -> str:
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    return runtime


def decoder_variant(runtime: str) -> str:
    """The exported graph variant an ONNX runtime name decodes with."""
    return "fp32" if runtime == "onnx-fp32" else "int8"


class Decoding(Protocol):
    """One batch's decoder state: the images' memory and the tokens fed so far. Each image owns
    `rows_per_image` consecutive rows (its beams, or its samples)."""

    def step(self, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Feed one token per row, (rows,) int64: the next-token logits (rows, V) float32 and
        the cross-attention behind them (rows, layers, heads, image tokens) float32 (None where
        `start` was told no attention is wanted and the runtime saves work by it)."""
        ...

    def keep(self, rows: np.ndarray, images: np.ndarray | None = None) -> None:
        """Carry on with the state of `rows` (beam search reorders, ended rows leave); `images`
        are the image slots kept when whole images leave (None: all stay). A kept row only
        comes from a row of its own image."""
        ...


class Runtime(Protocol):
    """What a `Captioner` runs: its encoder and its decoder."""

    name: str  # "onnx-int8", "onnx-fp32" or "torch"
    preprocess: Preprocess  # how pixels must be prepared for `encode`
    grid: tuple[int, int]  # (grid_h, grid_w) of the encoder's patch tokens
    max_length: int  # positions the decoder has, the start token included
    parameters: int | None  # the decoder's, where known

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """(batch, 3, S, S) normalised pixels to the encoder's tokens (batch, T, D)."""
        ...

    def start(self, features: np.ndarray, rows_per_image: int, attention: bool = True) -> Decoding:
        """A decoding of `rows_per_image` rows for each image of `features` (batch, T, D)."""
        ...
