"""Training throughput in captions/s: features from the disk cache against the encoder in every step.

Both loops run the same training step (the flickr8k-effnet preset: 16 images per step, each with
all its captions; forward, label-smoothed loss, backward, AdamW). With the cache a step reads the
memory-mapped fp16 grids; without it, it decodes and preprocesses the 16 photos and runs the frozen
EfficientNet-Lite2 over them first, as a pipeline without a cache must (once per image, sharing
it among the image's captions as our batches do, and once per (image, caption) example, as
caption-pair datasets do).
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from collections.abc import Callable

import torch
from _common import FLICKR8K_IMAGES, header, sample_images

from captioner import Captioner, CaptionerConfig, CaptionTokenizer, EncoderConfig
from captioner.data import CaptionRecord, load_records
from captioner.features import build_cache
from captioner.objective import token_loss_and_accuracy
from captioner.training.config import preset
from captioner.training.data import CaptionCollator, TrainCaptions, image_source


def records(count: int) -> list[CaptionRecord]:
    """Flickr8k training images with their five captions, else synthetic photos and captions."""
    if FLICKR8K_IMAGES.is_dir():
        return load_records(FLICKR8K_IMAGES.parent, "train")[:count]
    words = ["a dog runs", "two people walk", "a child plays", "a man rides", "a girl jumps"]
    return [
        CaptionRecord(f"synthetic-{i}", image, [f"{w} on the grass ." for w in words], "train")
        for i, image in enumerate(sample_images(count))
    ]


def trainer_step(model: Captioner, label_smoothing: float, bf16: bool) -> Callable:
    optimizer = torch.optim.AdamW(model.decoder.parameters(), lr=1e-4)

    def step(batch) -> None:
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):  # Lightning's bf16-mixed
            logits = model(batch.features, batch.ids[:, :-1], batch.image_index)
        loss, _, _ = token_loss_and_accuracy(
            logits.float(), batch.ids, batch.lengths, label_smoothing
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def captions_per_second(
    run_batch: Callable[[list[int]], int], images: int, per_step: int, steps: int
) -> float:
    """Runs `steps` steps of `per_step` images (after one warm-up step); captions/s."""
    batches = itertools.cycle([list(range(i, i + per_step)) for i in range(0, images, per_step)])
    run_batch(next(batches))
    captions = 0
    started = time.perf_counter()
    for _ in range(steps):
        captions += run_batch(next(batches))
    return captions / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=64, help="distinct images in the loop")
    parser.add_argument("--cached-steps", type=int, default=20)
    parser.add_argument("--encoder-steps", type=int, default=4)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast in every training step")
    args = parser.parse_args()
    header("Training throughput, CPU")

    config = preset("flickr8k-effnet")
    per_step = config.batch_size
    data = records(args.images)
    tokenizer = CaptionTokenizer.build_compact(c for r in data for c in r.captions)
    model = Captioner(
        CaptionerConfig(encoder=EncoderConfig(config.encoder.name), decoder=config.decoder),
        tokenizer,
    ).train()
    step = trainer_step(model, config.label_smoothing, args.bf16)
    collator = CaptionCollator(tokenizer, config.decoder.max_length)

    with tempfile.TemporaryDirectory() as cache_root:
        started = time.perf_counter()
        cache = build_cache(
            model.encoder, [image_source(r) for r in data], cache_root, progress=False
        )
        encode_s = time.perf_counter() - started
        dataset = TrainCaptions(data, cache)

        def cached(indices: list[int]) -> int:
            batch = collator([dataset[(i, tuple(range(len(data[i].captions))))] for i in indices])
            step(batch)
            return len(batch.ids)

        def encoder_in_loop(indices: list[int]) -> int:
            pixels = model.pixels([data[i].image for i in indices])
            features = model.encoder(pixels).tokens
            batch = collator.tokenize(features, [data[i].captions for i in indices])
            step(batch)
            return len(batch.ids)

        def encoder_per_caption(indices: list[int]) -> int:
            """Caption-pair datasets: every (image, caption) example loads and encodes its image."""
            pairs = [(i, text) for i in indices for text in data[i].captions]
            features = model.encoder(model.pixels([data[i].image for i, _ in pairs])).tokens
            batch = collator.tokenize(features, [[text] for _, text in pairs])
            step(batch)
            return len(batch.ids)

        with_cache = captions_per_second(cached, len(data), per_step, args.cached_steps)
        per_image = captions_per_second(encoder_in_loop, len(data), per_step, args.encoder_steps)
        per_caption = captions_per_second(
            encoder_per_caption, len(data), per_step, args.encoder_steps
        )

    print(
        f"{len(data)} images, {per_step} images x all captions per step, decoder {config.decoder.n_layers} layers d{config.decoder.d_model}, {'bf16 autocast' if args.bf16 else 'fp32'}"
    )
    print(f"building the cache once: {len(data) / encode_s:.1f} images/s ({encode_s:.1f} s)")
    print(f"feature cache:                    {with_cache:7.1f} captions/s")
    print(f"encoder in the loop, per image:   {per_image:7.1f} captions/s")
    print(f"encoder in the loop, per caption: {per_caption:7.1f} captions/s")
    print(
        f"ratio: x{with_cache / per_image:.1f} over per image, x{with_cache / per_caption:.1f} over per caption"
    )


if __name__ == "__main__":
    main()
