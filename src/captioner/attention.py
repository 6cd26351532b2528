"""Per-word attention maps: where in the image the decoder looked while writing each token."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# A perceptual colour ramp (dark purple -> orange -> pale yellow), as (position, r, g, b) stops.
_RAMP = np.array(
    [
        [0.00, 0, 0, 4],
        [0.25, 87, 16, 110],
        [0.50, 188, 55, 84],
        [0.75, 249, 142, 9],
        [1.00, 252, 255, 164],
    ],
    dtype=np.float32,
)


def select_map(
    attention: np.ndarray, token: int, layer: int | None = None, head: int | None = None
) -> np.ndarray:
    """One token's (grid_h, grid_w) map; `None` for layer or head means the mean over them."""
    maps = attention[token]
    maps = maps.mean(axis=0) if layer is None else maps[layer]
    return maps.mean(axis=0) if head is None else maps[head]


def colourise(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] to uint8 RGB through the colour ramp."""
    flat = np.clip(values, 0.0, 1.0).ravel()
    channels = [np.interp(flat, _RAMP[:, 0], _RAMP[:, c]) for c in (1, 2, 3)]
    return np.stack(channels, axis=-1).reshape(*values.shape, 3).astype(np.uint8)


def overlay(image: Image.Image, grid: np.ndarray, opacity: float = 0.6) -> Image.Image:
    """Lay a (grid_h, grid_w) attention map over `image` as a smoothly upsampled heatmap."""
    grid = grid.astype(np.float32)
    span = float(grid.max() - grid.min())
    normalised = (grid - grid.min()) / span if span > 0 else np.zeros_like(grid)
    small = Image.fromarray((normalised * 255).astype(np.uint8), mode="L")
    upsampled = np.asarray(small.resize(image.size, Image.Resampling.BICUBIC), np.float32) / 255
    heat = Image.fromarray(colourise(upsampled))
    return Image.blend(image.convert("RGB"), heat, opacity)


def save_token_heatmaps(
    image: Image.Image, tokens: list[str], attention: np.ndarray, directory: str | Path
) -> list[Path]:
    """One PNG per generated token (mean over layers and heads), named `NN-word.png`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, token in enumerate(tokens):
        safe = "".join(ch for ch in token if ch.isalnum()) or "token"
        path = directory / f"{index:02d}-{safe}.png"
        overlay(image, select_map(attention, index)).save(path)
        paths.append(path)
    return paths
