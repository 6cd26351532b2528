"""Training throughput in captions/s: features from the disk cache against the encoder in every step.

Both loops run the same training step of a preset (forward, label-smoothed loss, backward,
AdamW), with its encoder, decoder, images per step and captions per image: `flickr8k-effnet`
(EfficientNet-Lite2, 3 layers, 16 images each with all 5 captions) or the production
`flickr30k-clip` (CLIP ViT-B/32 with random weights, 6 layers, 128 images with one random caption
each). With the cache a step reads the memory-mapped fp16 grids; without it, it decodes and
preprocesses the step's photos and runs the frozen encoder over them first, as a pipeline without
a cache must: once per image, sharing it among the image's captions as our batches do, and once
per (image, caption) example, as caption-pair datasets do (the same thing where a step trains one
caption per image).
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from collections.abc import Callable

import torch
from _common import FLICKR8K_IMAGES, header, random_clip_encoder, sample_images

from captioner import CaptionerConfig, CaptionTokenizer, EncoderConfig
from captioner.batch import CaptionCollator
from captioner.data import CaptionRecord, load_records
from captioner.features import build_cache, image_source
from captioner.images import ImageInput
from captioner.objective import token_loss_and_accuracy
from captioner.torch_model import CaptionModel
from captioner.training.config import preset
from captioner.training.data import TrainCaptions


def records(count: int) -> list[CaptionRecord]:
    """Flickr8k training images with their five captions, else synthetic photos and captions."""
    if FLICKR8K_IMAGES.is_dir():
        return load_records(FLICKR8K_IMAGES.parent, "train")[:count]
    words = ["a dog runs", "two people walk", "a child plays", "a man rides", "a girl jumps"]
    return [
        CaptionRecord(f"synthetic-{i}", image, [f"{w} on the grass ." for w in words], "train")
        for i, image in enumerate(sample_images(count))
    ]


def encode(model: CaptionModel, images: list[ImageInput]) -> torch.Tensor:
    """The frozen encoder's tokens of `images`, decoded and preprocessed as `Captioner.pixels`
    does it; cloned out of inference mode, so that the decoder can train on them."""
    preprocess = model.encoder.preprocess
    pixels = preprocess.batch(images)
    return model.encoder(pixels).tokens.clone()


def trainer_step(model: CaptionModel, label_smoothing: float, bf16: bool) -> Callable:
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
    parser.add_argument(
        "--preset", default="flickr8k-effnet", help="flickr8k-effnet, flickr30k-clip"
    )
    parser.add_argument("--per-step", type=int, help="images per step (default: the preset's)")
    args = parser.parse_args()
    header("Training throughput, CPU")

    config = preset(args.preset)
    per_step = args.per_step or config.batch_size
    data = records(max(args.images, per_step))
    tokenizer = CaptionTokenizer.build_compact(c for r in data for c in r.captions)
    # CLIP's weights come from the hub; random ones run at the same speed.
    encoder = random_clip_encoder() if config.encoder.name == "clip" else None
    model = CaptionModel(
        CaptionerConfig(
            encoder=EncoderConfig(
                config.encoder.name, encoder and encoder.source, config.encoder.trained_blocks
            ),
            decoder=config.decoder,
        ),
        tokenizer,
        encoder,
    ).train()

    def trained_captions(i: int) -> list[str]:
        """All of an image's captions, or one ("random": the CLIP presets)."""
        captions = data[i].captions
        return captions if config.captions_per_image == "all" else captions[:1]

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
            captions = [tuple(range(len(trained_captions(i)))) for i in indices]
            # (image, its captions, not mirrored): the grids cached above
            batch = collator([dataset[(i, c, False)] for i, c in zip(indices, captions)])
            step(batch)
            return len(batch.ids)

        def encoder_in_loop(indices: list[int]) -> int:
            features = encode(model, [data[i].image for i in indices])
            batch = collator.tokenize(features, [trained_captions(i) for i in indices])
            step(batch)
            return len(batch.ids)

        def encoder_per_caption(indices: list[int]) -> int:
            """Caption-pair datasets: every (image, caption) example loads and encodes its image."""
            pairs = [(i, text) for i in indices for text in trained_captions(i)]
            features = encode(model, [data[i].image for i, _ in pairs])
            batch = collator.tokenize(features, [[text] for _, text in pairs])
            step(batch)
            return len(batch.ids)

        with_cache = captions_per_second(cached, len(data), per_step, args.cached_steps)
        per_image = captions_per_second(encoder_in_loop, len(data), per_step, args.encoder_steps)
        per_caption = captions_per_second(
            encoder_per_caption, len(data), per_step, args.encoder_steps
        )

    print(
        f"{args.preset}: {len(data)} images, {per_step} images x {'all captions' if config.captions_per_image == 'all' else 'one caption'} per step, {config.encoder.name}, decoder {config.decoder.n_layers} layers d{config.decoder.d_model}, {'bf16 autocast' if args.bf16 else 'fp32'}"
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
