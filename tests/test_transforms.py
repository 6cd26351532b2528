"""Preprocessing: the kept region only is resampled, with the pixels of resizing the whole image."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from captioner.images import ImageLoadError, UnsupportedImageError, load_image
from captioner.transforms import REDUCING_GAP, CropView, Preprocess

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


@pytest.mark.parametrize(
    ("position", "box"),
    [(0.0, (0, 0, 260, 260)), (0.5, (69, 19, 329, 279)), (1.0, (139, 39, 399, 299))],
)
def test_a_crop_view_is_a_square_of_the_image_resized_larger(
    position: float, box: tuple[int, int, int, int]
) -> None:
    """Zoom 1.15 resizes a 500x375 photo to 399x299 (not 347x260); `position` slides the
    260-pixel square from the top left corner to the bottom right one."""
    image = noisy_photo(500, 375)
    view = CropView(position, zoom=1.15)
    whole = image.resize((399, 299), Image.Resampling.BICUBIC)
    expected = np.asarray(whole.crop(box), dtype=np.int16)
    difference = np.abs(np.asarray(LITE2.resize_and_crop(image, view), dtype=np.int16) - expected)
    assert difference.max() <= 1 and np.count_nonzero(difference) < difference.size / 1000
    crop = LITE2.prepare(image, view=view).crop
    assert crop == pytest.approx((box[0] / 399, box[1] / 299, box[2] / 399, box[3] / 299))


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


def test_prepare_reads_every_kind_of_input_alike(tmp_path) -> None:
    photo = noisy_photo(120, 90)
    path = tmp_path / "photo.png"
    photo.save(path)
    expected = RESIZE_THEN_CROP(photo)
    left, top, right, bottom = RESIZE_THEN_CROP.crop_region(120, 90)
    with path.open("rb") as file:
        for source in (path, str(path), path.read_bytes(), file, photo, np.asarray(photo)):
            prepared = RESIZE_THEN_CROP.prepare(source)
            np.testing.assert_array_equal(prepared.pixels, expected)
            assert (prepared.width, prepared.height) == (120, 90) and prepared.image is None
            assert prepared.crop == pytest.approx((left / 120, top / 90, right / 120, bottom / 90))
    assert RESIZE_THEN_CROP.batch([path, photo]).shape == (2, 3, 224, 224)


def test_a_large_jpeg_decoded_small_keeps_its_full_size_and_crop() -> None:
    buffer = io.BytesIO()
    noisy_photo(2400, 1800).save(buffer, "JPEG")
    prepared = LITE2.prepare(buffer.getvalue(), image_side=300)
    assert (prepared.width, prepared.height) == (2400, 1800)
    assert prepared.image is not None and prepared.image.size == (300, 225)
    left, top, right, bottom = LITE2.crop_region(2400, 1800)
    full_scale = (left / 2400, top / 1800, right / 2400, bottom / 1800)
    assert prepared.crop == pytest.approx(full_scale, abs=0.005)


def test_mirrored_is_the_mirror_image_throughout() -> None:
    photo = noisy_photo(120, 80)  # even margins either side of the crop: an exact mirror
    plain = RESIZE_THEN_CROP.prepare(photo, image_side=60)
    mirrored = RESIZE_THEN_CROP.prepare(photo, mirrored=True, image_side=60)
    of_the_mirror = RESIZE_THEN_CROP.prepare(ImageOps.mirror(photo), image_side=60)
    np.testing.assert_array_equal(mirrored.pixels, of_the_mirror.pixels)
    assert mirrored.pixels.flags.c_contiguous
    assert mirrored.crop == pytest.approx(of_the_mirror.crop)
    assert plain.image is not None and mirrored.image is not None
    assert plain.image.size == (60, 40)
    assert np.array_equal(np.asarray(mirrored.image), np.asarray(ImageOps.mirror(plain.image)))
    # A corner mirrored is the mirror image's other top corner: at zoom 1.5 the photo is
    # resized to 576x384, and the top left 224 square of the photo is the top right one of its
    # mirror image (within a level: the two resamplings round alike up to float error).
    corner = RESIZE_THEN_CROP.prepare(photo, mirrored=True, view=CropView(0.0, zoom=1.5)).pixels
    whole = ImageOps.mirror(photo).resize((576, 384), Image.Resampling.BICUBIC)
    top_right = np.asarray(whole.crop((352, 0, 576, 224)), np.float32).transpose(2, 0, 1)
    assert np.abs((corner * 0.5 + 0.5) * 255 - top_right).max() <= 1.01


def test_whatever_goes_wrong_is_one_image_load_error_of_one_line(tmp_path) -> None:
    buffer = io.BytesIO()
    noisy_photo(64, 48).save(buffer, "JPEG")
    cut = tmp_path / "two\nlines.jpg"
    cut.write_bytes(buffer.getvalue()[:300])
    with pytest.raises(ImageLoadError, match="two lines.jpg is truncated or corrupt") as caught:
        LITE2.prepare(cut)
    assert "\n" not in str(caught.value)
    with pytest.raises(UnsupportedImageError, match="not an image"):
        LITE2.prepare(b"%PDF-1.4")
    # A mode Pillow cannot convert to RGB was a bare ValueError from deep inside Pillow.
    with pytest.raises(ImageLoadError, match="La image cannot be read as RGB"):
        LITE2.prepare(Image.new("La", (8, 8)))
