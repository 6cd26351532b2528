import io

import numpy as np
import pytest
from PIL import Image

from captioner.images import ImageLoadError, load_image


def test_every_input_kind_gives_the_same_rgb_image(photo, tmp_path):
    path = tmp_path / "photo.png"
    photo.save(path)
    buffer = io.BytesIO()
    photo.save(buffer, format="PNG")
    array = np.asarray(photo)
    for source in (path, str(path), buffer.getvalue(), photo, array, array / 255.0):
        image = load_image(source)
        assert image.mode == "RGB" and image.size == (160, 120)
        assert np.abs(np.asarray(image, np.int16) - array).max() <= 1


def test_grayscale_array_and_single_channel():
    gray = np.full((10, 12), 200, np.uint8)
    assert np.asarray(load_image(gray))[0, 0].tolist() == [200, 200, 200]
    assert load_image(gray[:, :, None]).size == (12, 10)


@pytest.mark.parametrize(
    "source, message",
    [
        ("/no/such/photo.jpg", "no such file"),
        (b"this is text, not a picture", "not an image"),
        (np.zeros((4, 4, 5), np.uint8), "HxWxC"),
        (np.zeros((4, 4, 3), np.int64), "uint8 or float"),
        (12345, "cannot read an image from a int"),
    ],
)
def test_bad_inputs_raise_clear_errors(source, message):
    with pytest.raises(ImageLoadError, match=message):
        load_image(source)


def test_truncated_jpeg_and_pixel_limit(photo):
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG")
    with pytest.raises(ImageLoadError, match="truncated or corrupt"):
        load_image(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ImageLoadError, match="over the limit"):
        load_image(buffer.getvalue(), max_pixels=100)


def test_transparency_goes_onto_white():
    clear = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert np.asarray(load_image(clear))[0, 0].tolist() == [255, 255, 255]
