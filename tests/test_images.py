import io
import os

import numpy as np
import pytest
from PIL import Image

from captioner.images import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_SIDE,
    ImageLoadError,
    ImageTooLargeError,
    image_iterator,
    load_image,
)


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


def test_file_objects_and_memoryview_are_read_like_bytes(photo, tmp_path):
    path = tmp_path / "photo.png"
    photo.save(path)
    expected = np.asarray(photo)
    buffer = io.BytesIO(path.read_bytes())
    buffer.seek(7)  # read from the start whatever the position, as PIL does
    with open(path, "rb") as binary_file:
        sources = [buffer, binary_file, memoryview(path.read_bytes())]
        for source in sources:
            assert np.array_equal(np.asarray(load_image(source)), expected)
    with pytest.raises(ImageLoadError, match=f"{path} is closed"):
        load_image(binary_file)
    with open(path) as text_file, pytest.raises(ImageLoadError, match="text mode.*'rb'"):
        load_image(text_file)
    with pytest.raises(ImageLoadError, match="not an image"):
        load_image(io.BytesIO(b"not a picture"))


def test_a_closed_pil_image_is_an_image_load_error(photo, tmp_path):
    path = tmp_path / "photo.png"
    photo.save(path)
    opened = Image.open(path)
    opened.close()
    with pytest.raises(ImageLoadError, match="the PIL image cannot be read"):
        load_image(opened)


@pytest.mark.parametrize(
    "array, message",
    [
        (np.full((4, 4, 3), 200.0), "from 0 to 1, got 200 to 200 .*divide 0..255 values by 255"),
        (np.full((4, 4), -0.5, np.float32), "from 0 to 1, got -0.5"),
        (np.full((4, 4, 3), np.nan), "NaN or infinite"),
        (np.zeros((0, 4, 3), np.float32), "empty"),
    ],
)
def test_float_arrays_outside_zero_to_one_are_refused_not_misread(array, message):
    with pytest.raises(ImageLoadError, match=message):
        load_image(array)


def test_float_arrays_in_zero_to_one_keep_their_values():
    array = np.linspace(0.0, 1.0, 48, dtype=np.float32).reshape(4, 4, 3)
    pixels = np.asarray(load_image(array)).astype(int)
    assert pixels.min() == 0 and pixels.max() == 255
    np.testing.assert_allclose(pixels, array * 255, atol=0.5)


def test_image_iterator_takes_one_image_or_an_ordered_iterable(photo):
    assert list(image_iterator("a.jpg")) == ["a.jpg"]
    assert list(image_iterator(b"bytes")) == [b"bytes"]
    assert list(image_iterator(photo)) == [photo]
    assert list(image_iterator(["a.jpg", "b.jpg"])) == ["a.jpg", "b.jpg"]
    assert list(image_iterator(name for name in ("a.jpg", "b.jpg"))) == ["a.jpg", "b.jpg"]
    for source, message in (
        (42, "cannot read an image from a int; pass a path, bytes"),
        (None, "cannot read an image from a NoneType"),
        ({"x": "a.jpg"}, "cannot caption a dict, which has no order"),
        ({"a.jpg"}, "cannot caption a set"),
    ):
        with pytest.raises(ImageLoadError, match=message):
            image_iterator(source)


def test_a_long_thin_image_is_refused_by_its_longest_side(tmp_path):  # issue 18, D19
    path = tmp_path / "thin.png"
    Image.new("1", (1, 300)).save(path)
    assert load_image(path).size == (1, 300)
    with pytest.raises(ImageTooLargeError, match=r"1x300 pixels, longer than .* 200 pixels a side"):
        load_image(path, max_side=200)
    # the default bounds a 1 x 39,000,000 PNG (76 KB, under the pixel limit) before decoding
    assert DEFAULT_MAX_SIDE < 39_000_000 <= DEFAULT_MAX_PIXELS


def test_paths_that_are_not_files_say_what_they_are(tmp_path):  # issue 18, D12
    os.mkfifo(tmp_path / "pipe.jpg")
    with pytest.raises(ImageLoadError, match="pipe.jpg is not a regular file"):
        load_image(tmp_path / "pipe.jpg")  # refused without opening it (which would block)
    with pytest.raises(ImageLoadError, match="is a folder, not an image file"):
        load_image(tmp_path)
    with pytest.raises(ImageLoadError, match="nothing.jpg: no such file"):
        load_image(tmp_path / "nothing.jpg")
    if os.geteuid() != 0:  # root reads whatever the mode
        locked = tmp_path / "locked.png"
        Image.new("RGB", (4, 4)).save(locked)
        locked.chmod(0)
        with pytest.raises(ImageLoadError, match="locked.png: cannot read it: Permission denied"):
            load_image(locked)


def test_a_heic_photo_without_the_heif_extra_is_one_line_naming_it(tmp_path):
    """Without pillow-heif (`pip install captioner` alone) an iPhone photo is refused in one
    line that says what to install, not called "not an image"."""
    import subprocess
    import sys

    from PIL import Image as PILImage

    path = tmp_path / "IMG_0001.HEIC"
    PILImage.new("RGB", (32, 24), (200, 100, 50)).save(path, "HEIF")
    assert path.read_bytes()[4:12] == b"ftypheic"
    script = (
        "import sys; sys.modules['pillow_heif'] = None\n"  # as without the extra
        "from captioner.images import ImageLoadError, load_image\n"
        "try:\n    load_image(sys.argv[1])\n"
        "except ImageLoadError as error:\n    print(error)\n"
    )
    run = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert (
        run.stdout
        == f"{path} is a HEIC/HEIF image: reading it needs pillow-heif, pip install 'captioner[heif]'\n"
    )
