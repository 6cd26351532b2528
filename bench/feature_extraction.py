"""Feature extraction in images/s: `build_cache` (what `captioner features` runs) over JPEG files,
for EfficientNet-Lite2 (the bundled model's encoder) and CLIP ViT-B/32 (random weights).

Each figure is the median of `--repeats` full builds into an empty cache folder: decoding and
preprocessing in a DataLoader worker, the frozen encoder in batches, fp16 rows written to disk.
The encoder alone on ready pixels is printed beside it, to show what the pipeline around it costs.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from _common import header, measure, median, random_clip_encoder, sample_images

from captioner.config import EncoderConfig
from captioner.encoders import ImageEncoder, build_encoder
from captioner.features import ImageSource, build_cache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    header("Feature extraction, CPU")

    folder = Path(tempfile.mkdtemp(prefix="bench-images-"))
    sources = []
    for i, data in enumerate(sample_images(args.images)):
        path = folder / f"{i:05d}.jpg"
        path.write_bytes(data)
        sources.append(ImageSource(path.stem, path))

    encoders = {
        "EfficientNet-Lite2 (260, 9x9x1280)": build_encoder(EncoderConfig("efficientnet-lite2")),
        "CLIP ViT-B/32 (224, 7x7x768)": random_clip_encoder(),
    }
    print(f"{args.images} JPEGs, batch {args.batch_size}, {args.num_workers} loader worker(s)\n")
    for name, encoder in encoders.items():

        def build(encoder: ImageEncoder = encoder) -> None:
            with tempfile.TemporaryDirectory() as root:
                build_cache(encoder, sources, root, args.batch_size, args.num_workers, False)

        size = encoder.preprocess.crop_size
        pixels = torch.randn(args.batch_size, 3, size, size)
        pipeline = args.images / median(measure(build, args.repeats, warmup=1))
        alone = args.batch_size / median(measure(lambda e=encoder, p=pixels: e(p), args.repeats))
        print(f"{name}")
        print(f"  build_cache:        {pipeline:7.1f} images/s")
        print(f"  encoder alone:      {alone:7.1f} images/s (pipeline at x{pipeline / alone:.2f})")


if __name__ == "__main__":
    main()
