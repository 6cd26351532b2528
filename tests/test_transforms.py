"""Preprocessing: the kept region only is resampled, with the pixels of resizing the whole image."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from captioner.images import load_image
from captioner.transforms import REDUCING_GAP, Preprocess

LITE2 = Preprocess(260, 260, (0.5,) * 3, (0.5,) * 3)
RESIZE_THEN_CROP = Preprocess(224, 256, (0.5,) * 3, (0.5,) * 3)


def resized_whole_then_cropped(preprocess: Preprocess, image: Image.Image) -> np.ndarray:
    """The old way: the whole image resized, then the centre crop."""
    size = preprocess.resized_size(*image.size)
    whole = image.resize(size, Image.Resampling.BICUBIC, reducing_gap=REDUCING_GAP)
    left, top = (size[0] - preprocess.crop_size) // 2, (size[1] - preprocess.crop_size) // 2
    crop = whole.crop((left, top, left + preprocess.crop_size, top + preprocess.crop_size))
    return np.asarray(crop, dtype=np.int16)


def noisy_photo(width: int, height: int) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) % 255], axis=-1)
    noise = np.random.default_rng(0).normal(0, 10, base.shape)
    return Image.fromarray((base + noise).clip(0, 255).astype(np.uint8))


def test_a_tiny_strip_is_resampled_at_the_output_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 165-byte 1x20000 PNG was resized to 260x5,200,000 (4 GB) before the crop."""
    buffer = io.BytesIO()
    Image.new("RGB", (1, 20_000), (120, 80, 40)).save(buffer, "PNG", optimize=True)
    assert len(buffer.getvalue()) < 200
    resized: list[tuple[int, int]] = []
    resize = Image.Image.resize

    def recording_resize(image: Image.Image, size, *args, **kwargs) -> Image.Image:
        resized.append(tuple(size))
        # Refuse before allocating, so that the old way fails here instead of exhausting memory.
        assert size[0] * size[1] <= 260 * 260, f"resizing to {size}"
        return resize(image, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", recording_resize)
    pixels = LITE2.prepare(buffer.getvalue()).pixels
    assert resized[-1] == (260, 260)  # the kept region, a few source rows high, then the output
    assert pixels.shape == (3, 260, 260)
    expected = (np.array([120, 80, 40]) / 255 - 0.5) / 0.5  # a flat colour stays that colour
    np.testing.assert_allclose(pixels.mean(axis=(1, 2)), expected, atol=1e-2)


@pytest.mark.parametrize("preprocess", [LITE2, RESIZE_THEN_CROP], ids=["260", "256-then-224"])
@pytest.mark.parametrize(
    "size", [(500, 375), (333, 500), (1000, 999), (260, 300), (64, 48), (7, 3000), (4032, 3024)]
)
def test_the_pixels_are_those_of_resizing_the_whole_image(
    preprocess: Preprocess, size: tuple[int, int]
) -> None:
    """Sharp edges included (the blue channel is a sawtooth): one level off on a few pixels."""
    image = noisy_photo(*size)
    difference = np.abs(
        np.asarray(preprocess.resize_and_crop(image), dtype=np.int16)
        - resized_whole_then_cropped(preprocess, image)
    )
    assert difference.max() <= 1 and np.count_nonzero(difference) < difference.size / 1000


def test_flickr8k_photos_keep_their_pixels(flickr8k) -> None:
    for path in sorted((flickr8k / "images").glob("*.jpg"))[:20]:
        image = load_image(path, min_size=LITE2.resize_size)
        cropped = np.asarray(LITE2.resize_and_crop(image), dtype=np.int16)
        np.testing.assert_array_equal(cropped, resized_whole_then_cropped(LITE2, image))


def test_crop_region_is_the_centre_square_in_source_pixels() -> None:
    left, top, right, bottom = RESIZE_THEN_CROP.crop_region(640, 480)
    # 480 -> 256 (scale 8/15), a 224 square: 420 source pixels, centred.
    assert (right - left, bottom - top) == pytest.approx((420, 420), abs=1.5)
    assert (left + right) / 2 == pytest.approx(320, abs=1) and top == pytest.approx(30, abs=1)


@pytest.mark.parametrize(
    ("crop", "resize", "resample"), [(300, 260, "bicubic"), (0, 260, "bicubic"), (9, 9, "nearest")]
)
def test_bad_preprocessing_is_refused(crop: int, resize: int, resample: str) -> None:
    with pytest.raises(ValueError, match="crop_size|resample"):
        Preprocess(crop, resize, (0.5,) * 3, (0.5,) * 3, resample)
