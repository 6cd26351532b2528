"""What the benchmark scripts share: timing, the models under test, sample images, the header.

Every script prints medians (and p95/p99 where a tail matters) and ratios against what it
compares with, all measured in the same run on the same machine.
"""

from __future__ import annotations

import dataclasses
import datetime
import io
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from captioner.onnx.runtime import DEFAULT_RUNTIME
from PIL import Image
from transformers.utils import logging as hf_logging

from captioner import Captioner, CaptionerConfig, EncoderConfig
from captioner.encoders.clip import CLIPEncoder
from captioner.hub import BUNDLED_DIR

REPO = Path(__file__).resolve().parents[1]
FLICKR8K_IMAGES = REPO.parent / "shared" / "datasets" / "flickr8k" / "images"
TRAINED_RUN = REPO / "runs" / "flickr8k-effnet" / "best"

# Peers and CLIP are built from configs: their load bars and notes are noise in a report.
hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()


def header(title: str) -> None:
    """The facts a reader needs to rerun and compare: machine, command, date, versions."""
    cpu = platform.processor() or platform.machine()
    with open("/proc/cpuinfo") as info:
        names = [line.split(":", 1)[1].strip() for line in info if line.startswith("model name")]
    cpu = names[0] if names else cpu
    print(f"# {title}")
    print(f"date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"machine: {cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}")
    print(
        f"python {platform.python_version()}, torch {torch.__version__}, threads {torch.get_num_threads()}"
    )
    print(f"command: python {' '.join(sys.argv)}")
    print()


def measure(run: Callable[[], object], repeats: int, warmup: int = 2) -> list[float]:
    """Seconds per call of `run`, after `warmup` untimed calls."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return times


def percentile(times: list[float], q: float) -> float:
    return float(np.percentile(times, q))


def median(times: list[float]) -> float:
    return statistics.median(times)


def synthetic_jpeg(width: int, height: int, seed: int = 0) -> bytes:
    """Gradients plus noise (so that JPEG has detail to code), quality 90."""
    generator = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], axis=-1)
    pixels = (base + generator.normal(0, 20, base.shape)).clip(0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def sample_images(count: int) -> list[bytes]:
    """JPEG bytes of real photos (the Flickr8k slice) where present, else synthetic 500x375
    JPEGs of the same size: decoding is part of what is timed."""
    if FLICKR8K_IMAGES.is_dir():
        paths = sorted(FLICKR8K_IMAGES.glob("*.jpg"))[:count]
        if len(paths) == count:
            return [path.read_bytes() for path in paths]
    return [synthetic_jpeg(500, 375, seed) for seed in range(count)]


def model_source(source: str | None) -> str | None:
    """`source`, else the bundled model (None), else the trained run's best checkpoint (what
    gets bundled, before it is)."""
    if source is None and not (BUNDLED_DIR / "config.json").is_file() and TRAINED_RUN.is_dir():
        return str(TRAINED_RUN)
    return source


def load_bundled(source: str | None, runtime: str = DEFAULT_RUNTIME) -> tuple[Captioner, str]:
    source = model_source(source)
    return Captioner.from_pretrained(source, runtime=runtime), source or "bundled flickr8k-effnet"


def random_clip_encoder() -> CLIPEncoder:
    """CLIP ViT-B/32's vision tower with random weights: speed does not depend on them."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    folder = tempfile.mkdtemp(prefix="clip-vit-b32-random-")
    CLIPVisionModel(CLIPVisionConfig(patch_size=32, image_size=224)).save_pretrained(folder)
    return CLIPEncoder(folder)


def random_clip_model(like: Captioner) -> Captioner:
    """CLIP ViT-B/32 (random weights) under a decoder shaped like `like`'s, same vocabulary."""
    encoder = random_clip_encoder()
    config = CaptionerConfig(
        encoder=EncoderConfig("clip", encoder.source),
        decoder=dataclasses.replace(like.config.decoder),
        generation=like.config.generation,
    )
    return Captioner(config, like.tokenizer, encoder).eval()


def force_length(model: Captioner) -> None:
    """Ban the end token, so every caption runs to `max_new_tokens` (as the peers' min_new_tokens
    = max_new_tokens does): all captioners then generate the same number of tokens."""
    banned = (*model.special.banned, model.special.end)
    model.special = dataclasses.replace(model.special, banned=banned)
