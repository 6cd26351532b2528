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
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime
from PIL import Image

from captioner import Captioner, CaptionerConfig, EncoderConfig
from captioner.hub import BUNDLED_DIR, CONFIG_FILE
from captioner.runtime.base import DEFAULT_RUNTIME
from captioner.runtime.onnx import OnnxRuntime, available_threads

if TYPE_CHECKING:
    from captioner.encoders.clip import CLIPEncoder
    from captioner.torch_model import CaptionModel

REPO = Path(__file__).resolve().parents[1]
FLICKR8K_IMAGES = REPO.parent / "shared" / "datasets" / "flickr8k" / "images"
TRAINED_RUN = REPO / "runs" / "flickr8k-effnet" / "best"


def quiet_transformers() -> None:
    """Peers and CLIP are built from configs: their load bars and notes are noise in a report."""
    from transformers.utils import logging as hf_logging

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
    versions = [
        f"python {platform.python_version()}",
        f"onnxruntime {onnxruntime.__version__} (threads {available_threads()})",
    ]
    try:
        import torch

        versions.append(f"torch {torch.__version__} (threads {torch.get_num_threads()})")
    except ImportError:  # the base install runs the ONNX Runtime benches without torch
        pass
    print(", ".join(versions))
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
    if source is None and not (BUNDLED_DIR / CONFIG_FILE).is_file() and TRAINED_RUN.is_dir():
        return str(TRAINED_RUN)
    return source


def model_name(source: str | None) -> str:
    return source or "bundled flickr8k-effnet"


def load_torch_model(source: str | None) -> tuple[CaptionModel, str]:
    """The PyTorch model of `source` (see `model_source`), its encoder in PyTorch too (an
    EfficientNet encoder would otherwise run in ONNX Runtime)."""
    from captioner.torch_model import CaptionModel

    source = model_source(source)
    return CaptionModel.from_pretrained(source, encoder_runtime="torch"), model_name(source)


def load_bundled(
    source: str | None, runtime: str = DEFAULT_RUNTIME, threads: int | None = None
) -> tuple[Captioner, str]:
    """`Captioner.from_pretrained(source, runtime)`, except that "torch" runs all of the model
    in PyTorch, and that ONNX Runtime runs on `threads` threads where given."""
    if runtime == "torch":
        model, name = load_torch_model(source)
        return model.captioner("torch"), name
    source = model_source(source)
    return with_threads(Captioner.from_pretrained(source, runtime), threads), model_name(source)


def with_threads(model: Captioner, threads: int | None) -> Captioner:
    """`model` with its ONNX Runtime sessions on `threads` threads (None: as it is, on every
    core this process may run on)."""
    if not threads or not isinstance(model.runtime, OnnxRuntime):
        return model
    old = model.runtime  # the same graphs, and the same encoder where it runs in PyTorch (CLIP)
    runtime = OnnxRuntime(old.directory, old.variant, threads, encoder=old._encode)
    return Captioner(model.config, model.tokenizer, runtime)


def random_clip_encoder() -> CLIPEncoder:
    """CLIP ViT-B/32's vision tower with random weights: speed does not depend on them."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from captioner.encoders.clip import CLIPEncoder

    quiet_transformers()
    folder = tempfile.mkdtemp(prefix="clip-vit-b32-random-")
    CLIPVisionModel(CLIPVisionConfig(patch_size=32, image_size=224)).save_pretrained(folder)
    return CLIPEncoder(folder)


def random_clip_model(like: Captioner, runtime: str = DEFAULT_RUNTIME) -> Captioner:
    """CLIP ViT-B/32 (random weights, in PyTorch) under a decoder shaped like `like`'s, same
    vocabulary, its decoder run by `runtime` (by default its graphs, exported into the cache)."""
    from captioner.torch_model import CaptionModel

    encoder = random_clip_encoder()
    config = CaptionerConfig(
        encoder=EncoderConfig("clip", encoder.source),
        decoder=dataclasses.replace(like.config.decoder),
        generation=like.config.generation,
    )
    return CaptionModel(config, like.tokenizer, encoder).eval().captioner(runtime)


def force_length(model: Captioner) -> None:
    """Ban the end token, so every caption runs to `max_new_tokens` (as the peers' min_new_tokens
    = max_new_tokens does): all captioners then generate the same number of tokens."""
    banned = (*model.special.banned, model.special.end)
    model.special = dataclasses.replace(model.special, banned=banned)
