"""Image preprocessing with PIL and numpy only (no torchvision): resize, centre crop, normalise;
and `Preprocess.prepare`, the one way any input becomes the encoder's pixels."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from captioner.images import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_SIDE,
    ImageInput,
    full_size,
    load_image,
)


@dataclass(frozen=True)
class PreparedImage:
    """One input made ready for the encoder, with what a caller shows beside its caption."""

    pixels: np.ndarray  # (3, crop, crop) float32, normalised
    width: int  # of the upright image as its owner knows it, also when decoded at a reduced scale
    height: int
    # The square the encoder sees, (left, top, right, bottom) as fractions of width and height:
    # the same at any decoding scale.
    crop: tuple[float, float, float, float]
    # The upright RGB image, shrunk to the `image_side` asked for (None when not asked).
    image: Image.Image | None = None


@dataclass(frozen=True)
class CropView:
    """Which square of an image the encoder sees: the image is resized `zoom` times larger than
    the encoder's preprocessing resizes it, and the square is cut at `position`, the share of
    each margin left before it (0: top left corner, 0.5: centred, 1: bottom right). The
    preprocessing itself is `CENTRE`; the others are training augmentations."""

    position: float = 0.5
    zoom: float = 1.0


CENTRE = CropView()


@dataclass(frozen=True)
class Preprocess:
    """The preprocessing an encoder's weights were trained with.

    Its `key` names it exactly, so cached features are invalidated when any part changes.
    """

    crop_size: int
    resize_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resample: str = "bicubic"

    @property
    def key(self) -> str:
        mean = ",".join(f"{m:.6g}" for m in self.mean)
        std = ",".join(f"{s:.6g}" for s in self.std)
        return (
            f"resize{self.resize_size}-{self.resample}-crop{self.crop_size}-mean{mean}-std{std}"
            f"-v{PIXELS_VERSION}"
        )

    def __post_init__(self) -> None:
        if not 0 < self.crop_size <= self.resize_size:
            raise ValueError(
                f"crop_size must be from 1 to resize_size ({self.resize_size}), "
                f"got {self.crop_size}"
            )
        if self.resample not in _RESAMPLE:
            raise ValueError(
                f"resample must be one of {', '.join(_RESAMPLE)}, got {self.resample!r}"
            )

    def resized_size(self, width: int, height: int, zoom: float = 1.0) -> tuple[int, int]:
        """The size the whole image would have with its shorter side resized to `resize_size`
        (times `zoom`)."""
        shorter = round(self.resize_size * zoom)
        scale = shorter / min(width, height)
        return max(shorter, round(width * scale)), max(shorter, round(height * scale))

    def crop_region(
        self, width: int, height: int, view: CropView = CENTRE
    ) -> tuple[float, float, float, float]:
        """The box (left, top, right, bottom), in the image's own pixels, that resizing the
        shorter side to `resize_size` and then centre-cropping `crop_size` keeps (or cropping
        as `view` says)."""
        resized_width, resized_height = self.resized_size(width, height, view.zoom)
        left = int((resized_width - self.crop_size) * view.position)
        top = int((resized_height - self.crop_size) * view.position)
        x_scale, y_scale = width / resized_width, height / resized_height
        return (
            left * x_scale,
            top * y_scale,
            (left + self.crop_size) * x_scale,
            (top + self.crop_size) * y_scale,
        )

    def resize_and_crop(self, image: Image.Image, view: CropView = CENTRE) -> Image.Image:
        """The (crop, crop) image the encoder sees: what resizing the whole image and then
        cropping it gives (to within one level on a few pixels), but only the region the filter
        reads is resampled, so the work is bounded by the output: a 1x20000 strip is not first
        resized to 260x5,200,000."""
        size, resample = self.crop_size, _RESAMPLE[self.resample]
        resized_width, resized_height = self.resized_size(*image.size, view.zoom)
        factors = (
            int(image.width / resized_width / REDUCING_GAP) or 1,
            int(image.height / resized_height / REDUCING_GAP) or 1,
        )
        image, (left, top, right, bottom) = _region_read(
            image, self.crop_region(*image.size, view), factors, size, _SUPPORT[self.resample]
        )
        # Horizontal pass, then vertical, in two calls: Pillow resizes a whole image in that
        # order, but a box in either order, and the 8-bit rounding in between differs.
        rows = image.resize((size, image.height), resample, box=(left, 0, right, image.height))
        return rows.resize((size, size), resample, box=(0, top, size, bottom))

    def __call__(self, image: Image.Image, view: CropView = CENTRE) -> np.ndarray:
        """One RGB image to normalised (3, crop, crop) float32 pixels."""
        image = self.resize_and_crop(image, view)
        pixels: np.ndarray = np.asarray(image, dtype=np.float32) / 255.0
        pixels = (pixels - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(pixels.transpose(2, 0, 1))

    def prepare(
        self,
        source: ImageInput,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_side: int = DEFAULT_MAX_SIDE,
        mirrored: bool = False,
        image_side: int | None = None,
        view: CropView = CENTRE,
    ) -> PreparedImage:
        """Any input (path, bytes, file object, PIL image, array) as the encoder's pixels: the
        one way features, collections, the server and `Captioner` read an image, so that each
        answers a bad one alike. Everything wrong with it is an ImageLoadError of one line
        (UnsupportedImageError when it is not an image, ImageTooLargeError over `max_pixels` or
        `max_side`); a large JPEG is decoded at the smallest scale this preprocessing can still
        resize from.

        `mirrored`: all of it is of the left-right mirror image (a training augmentation).
        `view`: the square to cut, when not the centre one (a training augmentation).
        `image_side`: keep the upright image too, shrunk to at most this many pixels a side (to
        draw heatmaps on; a 12 MP photo would be costly to ship between processes)."""
        image = load_image(source, max_pixels, min_size=self.resize_size, max_side=max_side)
        width, height = full_size(image)
        left, top, right, bottom = self.crop_region(*image.size, view)
        pixels = self(image, view)
        crop = (left / image.width, top / image.height, right / image.width, bottom / image.height)
        shown = None if image_side is None else _shrunk(image, image_side)
        if mirrored:
            # Mirroring the square is cropping the mirror image (at the mirrored position, to
            # within a pixel when its margins are odd), at a fraction of the cost.
            pixels = np.ascontiguousarray(pixels[:, :, ::-1])
            crop = (1.0 - crop[2], crop[1], 1.0 - crop[0], crop[3])
            shown = None if shown is None else ImageOps.mirror(shown)
        return PreparedImage(pixels, width, height, crop, shown)

    def batch(self, sources: Sequence[ImageInput]) -> np.ndarray:
        """(batch, 3, crop, crop) float32 pixels of `sources`, each read by `prepare`."""
        return np.stack([self.prepare(source).pixels for source in sources])


def _shrunk(image: Image.Image, side: int) -> Image.Image:
    """A copy of `image` at most `side` pixels a side (`image` may be the caller's own)."""
    shrunk = image.copy()
    shrunk.thumbnail((side, side))
    return shrunk


# Bumped when the same settings start giving (even slightly) different pixels, so that feature
# caches made before are not mixed with new grids. 2: only the kept region is resampled (one
# level off on a few pixels in a thousand of some images; Flickr8k's are unchanged).
PIXELS_VERSION = 2

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


# An image over this many times the target size is first shrunk by an integer box filter, then
# resampled (Pillow's `reducing_gap`): the costly filter then reads about this many times the
# output's width and height rather than a whole camera photo, for a difference of a few levels
# on some pixels.
# Smaller images (Flickr8k's, COCO's) are resized exactly as without it.
REDUCING_GAP = 3.0
# How far either side of its centre each filter reads, in input pixels when upscaling (Pillow's).
_SUPPORT = {"bicubic": 2.0, "bilinear": 1.0}


def _region_read(
    image: Image.Image,
    box: tuple[float, float, float, float],
    factors: tuple[int, int],
    size: int,
    support: float,
) -> tuple[Image.Image, tuple[float, float, float, float]]:
    """The part of `image` that resampling `box` to `size` reads, shrunk by the integer
    `factors` (Pillow's `reducing_gap` step) with its blocks where reducing the whole image puts
    them, and `box` in that part's coordinates."""
    edges = []
    for low, high, factor, length in (
        (box[0], box[2], factors[0], image.width),
        (box[1], box[3], factors[1], image.height),
    ):
        scale = max((high - low) / factor / size, 1.0)  # the filter widens when shrinking
        margin = (support * scale + 1) * factor
        start = max(0, math.floor((low - margin) / factor) * factor)
        edges.append((start, min(length, math.ceil((high + margin) / factor) * factor)))
    (left, right), (top, bottom) = edges
    region = (left, top, right, bottom)
    part = image.reduce(factors, box=region) if factors != (1, 1) else image.crop(region)
    factor_x, factor_y = factors
    return part, (
        (box[0] - left) / factor_x,
        (box[1] - top) / factor_y,
        (box[2] - left) / factor_x,
        (box[3] - top) / factor_y,
    )
