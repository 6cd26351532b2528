"""Turning whatever a user hands us (path, bytes, file object, PIL image, array) into a clean RGB
PIL image.

Everything that can go wrong with an input image is raised as `ImageLoadError`, whose message is
meant to be shown to the user as it is (by the CLI and the web server).
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
from collections.abc import Iterable, Iterator, Mapping, Set
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

try:  # the heif extra: iPhone photos (HEIC/HEIF) then open like any other format
    from pillow_heif import register_heif_opener
except ImportError:
    HEIF_EXTRA = False
else:
    register_heif_opener()
    HEIF_EXTRA = True
# The brands of an ISO media file's `ftyp` box that mark HEIF images (HEIC and AVIF among them).
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1", b"avif"}

if TYPE_CHECKING:
    from typing_extensions import TypeIs

ImageInput = (
    str | os.PathLike | bytes | bytearray | memoryview | BinaryIO | Image.Image | np.ndarray
)
_SUPPORTED = "a path, bytes, a binary file object, a PIL image or a numpy array"

# Refuse images whose pixel count would blow up memory when decoded (decompression bombs).
DEFAULT_MAX_PIXELS = 40_000_000
# And images longer than this on a side, whatever their pixel count: decoding costs per row as
# well as per pixel, so a 76 KB PNG of 1 x 39,000,000 one-bit pixels took 5 s and a gigabyte
# while a 24 MP photo takes 0.3 s; 1 x 32,768 takes 0.08 s. Panoramas and long screenshots fit.
DEFAULT_MAX_SIDE = 32_768


class ImageLoadError(ValueError):
    """The input is not a usable image; the message says why in plain words, on one line
    whatever the file's name holds (a name may hold line breaks)."""

    def __init__(self, message: str):
        super().__init__(" ".join(message.split()))


class UnsupportedImageError(ImageLoadError):
    """Not an image, or in a format we cannot decode (the web server answers 415)."""


class ImageTooLargeError(ImageLoadError):
    """Too many pixels to decode safely: a decompression bomb (the web server answers 413)."""


def load_image(
    source: ImageInput,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_size: int | None = None,
    max_side: int = DEFAULT_MAX_SIDE,
) -> Image.Image:
    """Decode `source` into an upright RGB image (EXIF orientation applied, first frame only).

    Files, bytes and file objects over `max_pixels` pixels or `max_side` pixels on a side are
    refused before they are decoded (ImageTooLargeError naming the limit).

    `min_size`: the shortest side the caller needs (the encoder's resize). A JPEG is then decoded
    straight at the smallest 1/2, 1/4 or 1/8 scale that keeps both sides at least that long
    (libjpeg's DCT scaling): a 12 MP photo decodes several times faster, and the preprocessed
    pixels stay within 0.6/255 on average of a full decode.
    """
    if isinstance(source, Image.Image):
        image = _readable(source)
    elif isinstance(source, np.ndarray):
        image = _from_array(source)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        data = io.BytesIO(bytes(source))
        image = _open(data, "the uploaded data", max_pixels, min_size, max_side)
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        _check_file(path)
        image = _open(path, str(path), max_pixels, min_size, max_side)
    elif hasattr(source, "read"):
        file = _binary_file(source)
        image = _open(file, _file_label(source), max_pixels, min_size, max_side)
    else:
        raise ImageLoadError(
            f"cannot read an image from a {type(source).__name__}; pass {_SUPPORTED}"
        )
    return to_rgb(image)


def is_image_input(source: object) -> TypeIs[ImageInput]:
    """Whether `source` is one image (of a kind `load_image` reads), not a collection of them."""
    single = (str, os.PathLike, bytes, bytearray, memoryview, Image.Image, np.ndarray)
    return isinstance(source, single) or hasattr(source, "read")


def image_iterator(images: ImageInput | Iterable[ImageInput]) -> Iterator[ImageInput]:
    """One image, or an ordered iterable of them (list, tuple, generator...), as an iterator;
    ImageLoadError naming the type for anything else."""
    if is_image_input(images):
        return iter([images])
    if isinstance(images, (Mapping, Set)):
        raise ImageLoadError(
            f"cannot caption a {type(images).__name__}, which has no order: pass a list of images"
        )
    if not isinstance(images, Iterable):
        raise ImageLoadError(
            f"cannot read an image from a {type(images).__name__}; pass {_SUPPORTED}, "
            "or a list or other iterable of them"
        )
    return iter(images)


def _readable(image: Image.Image) -> Image.Image:
    """A caller's PIL image with its pixels loaded (a lazily opened file may be closed or
    truncated by now)."""
    try:
        image.load()
    except (OSError, ValueError, SyntaxError) as error:
        raise ImageLoadError(f"the PIL image cannot be read: {error}") from None
    return image


def _binary_file(source: Any) -> BinaryIO:
    if getattr(source, "closed", False):
        raise ImageLoadError(f"{_file_label(source)} is closed")
    if isinstance(source, io.TextIOBase):
        raise ImageLoadError(f"{_file_label(source)} is open in text mode: open it with 'rb'")
    return source


def _file_label(source: object) -> str:
    name = getattr(source, "name", None)
    return name if isinstance(name, str) else f"the {type(source).__name__}"


def _check_file(path: Path) -> None:
    """ImageLoadError saying why a path cannot be read as a file, in plain words."""
    try:
        found = os.stat(path)
    except FileNotFoundError:
        raise ImageLoadError(f"{path}: no such file") from None
    except OSError as error:
        raise ImageLoadError(f"{path}: cannot read it: {error.strerror}") from None
    if stat.S_ISDIR(found.st_mode):
        raise ImageLoadError(f"{path} is a folder, not an image file")
    if not stat.S_ISREG(found.st_mode):
        raise ImageLoadError(f"{path} is not a regular file (a pipe, socket or device)")


def _is_heif(fp: Path | BinaryIO) -> bool:
    """Whether the file starts as a HEIF image does (an `ftyp` box with a HEIF brand)."""
    try:
        if isinstance(fp, Path):
            with fp.open("rb") as file:
                head = file.read(12)
        else:
            fp.seek(0)
            head = fp.read(12)
    except (OSError, ValueError):
        return False
    return head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS


def _open(
    fp: Path | BinaryIO,
    label: str,
    max_pixels: int,
    min_size: int | None,
    max_side: int = DEFAULT_MAX_SIDE,
) -> Image.Image:
    try:
        image = Image.open(fp)
    except UnidentifiedImageError:
        if not HEIF_EXTRA and _is_heif(fp):
            raise UnsupportedImageError(
                f"{label} is a HEIC/HEIF image: reading it needs pillow-heif, "
                "pip install 'captioner[heif]'"
            ) from None
        raise UnsupportedImageError(f"{label} is not an image in a supported format") from None
    except Image.DecompressionBombError:
        # Pillow's own ceiling (twice Image.MAX_IMAGE_PIXELS), far above ours.
        raise ImageTooLargeError(
            f"{label} has more pixels than the limit of {max_pixels} (max_pixels)"
        ) from None
    except PermissionError as error:
        raise ImageLoadError(f"{label}: cannot read it: {error.strerror}") from None
    except OSError as error:
        raise ImageLoadError(f"{label} is truncated or corrupt: {error}") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"{label} is {width}x{height} pixels, over the limit of {max_pixels} pixels "
            "(max_pixels)"
        )
    if max(width, height) > max_side:
        raise ImageTooLargeError(
            f"{label} is {width}x{height} pixels, longer than the limit of {max_side} pixels "
            "a side (max_side)"
        )
    try:
        if min_size and image.format == "JPEG":
            image.draft("RGB", (min_size, min_size))
        image.seek(0)  # animated GIF/WebP/APNG: caption the first frame
        image.load()
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageLoadError(f"{label} is truncated or corrupt: {error}") from None
    if image.size != (width, height):  # decoded at reduced scale
        image.info[_FULL_SIZE] = ((width, height), image.size)
    return image


_FULL_SIZE = "captioner_full_size"


def full_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) of the upright image at full scale, also when `load_image` decoded it at a
    reduced one (what a client that uploaded it knows it as)."""
    if _FULL_SIZE not in image.info:
        return image.size
    (width, height), decoded = image.info[_FULL_SIZE]
    # EXIF orientation may have turned the decoded image a quarter turn since.
    return (width, height) if image.size == decoded else (height, width)


def _from_array(array: np.ndarray) -> Image.Image:
    """HxW or HxWxC arrays, uint8 (0..255) or float (0..1: a float array holding 0..255 is
    refused, not guessed at, since a dark 0..1 image can look the same)."""
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise ImageLoadError(
            f"an image array must be HxW or HxWxC with C in 1, 3, 4; got {array.shape}"
        )
    if array.size == 0:
        raise ImageLoadError(f"the image array is empty: {array.shape}")
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ImageLoadError("the float image array holds NaN or infinite values")
        low, high = float(array.min()), float(array.max())
        if low < 0.0 or high > 1.0:
            raise ImageLoadError(
                f"a float image array must hold values from 0 to 1, got {low:g} to {high:g} "
                "(divide 0..255 values by 255, or pass uint8)"
            )
        array = (array * 255.0 + 0.5).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise ImageLoadError(f"image arrays must be uint8 or float, got {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    return Image.fromarray(np.ascontiguousarray(array))


def to_rgb(image: Image.Image) -> Image.Image:
    """Upright RGB whatever the mode: transparency goes onto white, 16-bit is scaled down.
    ImageLoadError for a mode Pillow cannot convert (such as premultiplied "La")."""
    with contextlib.suppress(OSError, ValueError, SyntaxError):  # broken EXIF: keep the pixels
        image = ImageOps.exif_transpose(image)
    try:
        return _rgb(image)
    except (OSError, ValueError) as error:
        raise ImageLoadError(f"a {image.mode} image cannot be read as RGB: {error}") from None


def _rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float32)
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) / (high - low) * 255.0 if high > low else np.zeros_like(values)
        return Image.fromarray(scaled.astype(np.uint8)).convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
