"""What one hostile image costs to load, against a 12 MP photo measured in the same run.

A 1 x 39,000,000 one-bit PNG is 76 KB and under the 40 M-pixel limit, but PNG decodes a row at a
time: decoded, it costs seconds and a gigabyte. The longest-side limit (`max_side`, default
32,768) refuses it from its header. This prints the median seconds of `load_image` (as the CLI
and the server call it: decoded for the encoder's 256-pixel resize) for each, and its ratio to
the photo; "refused" rows time the refusal.

    python bench/hostile_images.py [--repeats N]
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header, measure, median, synthetic_jpeg  # noqa: E402

from captioner.images import DEFAULT_MAX_SIDE, ImageTooLargeError, load_image  # noqa: E402

RESIZE = 256  # the bundled encoder's resize: JPEGs decode at the smallest scale that keeps it


def one_bit_png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (width, height)).save(buffer, format="PNG")
    return buffer.getvalue()


def load(data: bytes, max_side: int) -> str:
    try:
        load_image(data, min_size=RESIZE, max_side=max_side)
    except ImageTooLargeError:
        return "refused"
    return "decoded"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    header("hostile images: load_image seconds against a 12 MP photo")
    cases = [
        ("12 MP photo (JPEG 4000x3000)", synthetic_jpeg(4000, 3000), DEFAULT_MAX_SIDE),
        ("1 x 32,768 PNG (the longest side allowed)", one_bit_png(1, 32_768), DEFAULT_MAX_SIDE),
        ("1 x 39,000,000 PNG", one_bit_png(1, 39_000_000), DEFAULT_MAX_SIDE),
        ("1 x 39,000,000 PNG, no side limit", one_bit_png(1, 39_000_000), 10**9),
    ]
    photo = None
    print(f"{'image':46} {'bytes':>9} {'outcome':>8} {'median s':>9} {'x photo':>8}")
    for name, data, max_side in cases:
        outcome = load(data, max_side)
        seconds = median(measure(lambda d=data, m=max_side: load(d, m), args.repeats, warmup=1))
        photo = photo or seconds
        print(f"{name:46} {len(data):9d} {outcome:>8} {seconds:9.4f} {seconds / photo:8.2f}")


if __name__ == "__main__":
    main()
