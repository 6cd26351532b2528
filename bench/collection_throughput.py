"""Captioning a folder: images/s of the collection path (`caption_collection`: loader processes,
batches through the encoder and batched decoding, rows appended to a JSONL file) against calling
`Captioner.caption([path])` once per image, greedy and beam 3, in one run.

The folder holds the first `--images` Flickr8k photos (copied into a temporary folder; synthetic
500x375 JPEGs where the dataset is absent). Both paths start from the JPEG files on disk and
decode, preprocess, encode and decode the captions of every image; the per-image loop keeps its
captions in memory, the collection path writes its JSONL file (flushed after each batch). Each
round times both paths once per decoding mode, alternating, after one untimed warm-up each; the
figures are the medians over the rounds.

It also times what bounds the collection path on this machine: the model alone on the
folder's pixels (decoded and preprocessed beforehand, not timed; batches of `--batch-size`,
pipelined as the collection path runs them: the next batch's encoder beside this batch's
decoding), the encoder alone, and reading + decoding + preprocessing alone (one process). The
collection path does all of it on the same cores.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from _common import FLICKR8K_IMAGES, header, load_bundled, median, synthetic_jpeg

from captioner.collection import CollectionConfig, caption_collection
from captioner.collection.job import default_workers, pipelined
from captioner.runtime.base import DEFAULT_RUNTIME, RUNTIMES


def photo_folder(count: int) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="captioner-collection-bench-"))
    photos = sorted(FLICKR8K_IMAGES.glob("*.jpg"))[:count] if FLICKR8K_IMAGES.is_dir() else []
    if len(photos) == count:
        for photo in photos:
            shutil.copy(photo, folder / photo.name)
    else:
        for seed in range(count):
            (folder / f"synthetic-{seed:04d}.jpg").write_bytes(synthetic_jpeg(500, 375, seed))
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model folder (default: the bundled model)")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=CollectionConfig.batch_size)
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--runtime", choices=RUNTIMES, default=DEFAULT_RUNTIME)
    args = parser.parse_args()

    header("Collection captioning throughput")
    model, source = load_bundled(args.model, args.runtime)
    name = f"{source}, runtime {args.runtime} ({model.runtime.name})"
    folder = photo_folder(args.images)
    paths = sorted(folder.iterdir())
    output = folder.parent / f"{folder.name}.jsonl"
    kind = "Flickr8k photos" if paths[0].name[0].isdigit() else "synthetic JPEGs"
    print(f"model: {name}; {len(paths)} {kind}; batch {args.batch_size}, {args.workers} workers")
    print(f"rounds: {args.rounds} (median); images/s over the whole folder\n")

    def one_by_one(beams: int) -> float:
        started = time.perf_counter()
        for path in paths:
            model.caption([path], num_beams=beams)
        return len(paths) / (time.perf_counter() - started)

    def collection(beams: int) -> float:
        config = CollectionConfig(
            output=output,
            overwrite=True,
            progress=False,
            batch_size=args.batch_size,
            num_workers=args.workers,
        )
        started = time.perf_counter()
        summary = caption_collection(model, [folder], config, num_beams=beams)
        assert summary.captioned == len(paths), summary
        return len(paths) / (time.perf_counter() - started)

    pixels = model.pixels(paths)

    def encoder_alone() -> float:
        started = time.perf_counter()
        for start in range(0, len(pixels), args.batch_size):
            model.encode(pixels[start : start + args.batch_size])
        return len(paths) / (time.perf_counter() - started)

    def model_alone(beams: int) -> float:
        generation = model.generation_config(num_beams=beams)
        batches = [pixels[i : i + args.batch_size] for i in range(0, len(pixels), args.batch_size)]
        started = time.perf_counter()
        pipelined(
            batches,
            model.encode,
            lambda _, features: model.generate_from_features(features, generation),
        )
        return len(paths) / (time.perf_counter() - started)

    def reading_alone() -> float:
        started = time.perf_counter()
        for path in paths:
            model.pixels([path])
        return len(paths) / (time.perf_counter() - started)

    modes = {"greedy": 1, "beam 3": 3}
    for beams in modes.values():  # warm-up: ONNX sessions, loader start-up paths, caches
        model.caption([paths[0]], num_beams=beams)
        caption_collection(model, [paths[0]], CollectionConfig(progress=False), num_beams=beams)
    rates: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for mode, beams in modes.items():
            rates.setdefault((mode, "one"), []).append(one_by_one(beams))
            rates.setdefault((mode, "collection"), []).append(collection(beams))
            rates.setdefault((mode, "model alone"), []).append(model_alone(beams))
        rates.setdefault(("encoder", "alone"), []).append(encoder_alone())
        rates.setdefault(("reading", "alone"), []).append(reading_alone())

    print(
        "| decoding | caption([path]) per image | caption_collection | ratio "
        "| model alone, pixels ready | its ratio |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for mode in modes:
        one = median(rates[(mode, "one")])
        batched = median(rates[(mode, "collection")])
        bound = median(rates[(mode, "model alone")])
        print(
            f"| {mode} | {one:.1f} img/s | {batched:.1f} img/s | x{batched / one:.2f} "
            f"| {bound:.1f} img/s | x{bound / one:.2f} |"
        )
    encoder, reading = median(rates[("encoder", "alone")]), median(rates[("reading", "alone")])
    print(f"\nencoder alone, pixels ready: {encoder:.1f} img/s")
    print(f"reading, decoding and preprocessing alone, one process: {reading:.1f} img/s")
    print("\nall rounds (img/s):")
    for (mode, path), values in rates.items():
        print(f"  {mode}, {path}: {', '.join(f'{v:.1f}' for v in values)}")
    shutil.rmtree(folder)
    output.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
