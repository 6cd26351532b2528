"""The original system's set-up at full size, end to end, with random weights.

Preset `flickr30k-clip-original` (CLIP ViT-B/32's vision tower, its text tower's frozen
49408 x 512 token table through a learned projection, a 512-wide 8-head 6-layer decoder over
CLIP's whole vocabulary, one random caption per image each epoch) built from Hugging Face's
default `CLIPVisionConfig()` / `CLIPTextConfig()` (ViT-B/32) with random weights, nothing
downloaded, run through the project's own code on a few hundred Flickr8k photos: feature
extraction (`extract_features`), training (`train`, a few hundred steps), evaluation (`evaluate`,
with CLIPScore from the same CLIP), and ONNX export (decoder graphs, fp32 and int8, and the CLIP
vision tower). Prints seconds a step, captions a second, peak memory, cache and export sizes.
The figures are about size and speed: with random CLIP weights the captions mean nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import FLICKR8K_IMAGES, header
from lightning.pytorch.callbacks import Callback

from captioner.data import load_records
from captioner.evaluation.clipscore import CLIPScorer
from captioner.evaluation.evaluate import evaluate
from captioner.features import record_key
from captioner.hub import WEIGHTS_FILE
from captioner.onnx.export import ENCODER_FILE, export_decoder
from captioner.torch_model import CaptionModel
from captioner.training.config import preset
from captioner.training.run import extract_features, train

PRESET = "flickr30k-clip-original"


class StepTimer(Callback):
    """Seconds of each training step (forward, backward, optimiser); stops after `steps`."""

    def __init__(self, steps: int, device: str):
        self.steps, self.device = steps, device
        self.times: list[float] = []
        self._started = 0.0

    def _sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self._sync()
        self._started = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self._sync()
        self.times.append(time.perf_counter() - self._started)
        if len(self.times) >= self.steps:
            trainer.should_stop = True


def save_random_clip(folder: Path) -> None:
    """CLIP ViT-B/32 (both towers, Hugging Face's default configs) with random weights."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    CLIPModel(CLIPConfig()).save_pretrained(folder)


def write_subset(folder: Path, root: Path, train_images: int, dev_images: int) -> Path:
    """The first train and dev photos of the Flickr8k folder `root` with their captions, as a
    captions.jsonl whose image paths point into `root` (nothing copied)."""
    rows = [
        *load_records(root, "train")[:train_images],
        *load_records(root, "dev")[:dev_images],
    ]
    lines = [
        json.dumps(
            {
                "image": str(Path(r.image).resolve()),
                "image_id": r.image_id,
                "split": r.split,
                "captions": r.captions,
            }
        )
        for r in rows
    ]
    path = folder / "captions.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def peak_memory(device: str) -> str:
    """Peak resident memory of this process so far, and the GPU's peak allocation."""
    text = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB RSS"
    if device == "cuda":
        text += f", {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB GPU"
    return text


def load_average() -> str:
    """The 1, 5 and 15-minute load averages: on a shared machine, how contended the run was."""
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


def size_of(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


def captions_per_second(
    model: CaptionModel, features: torch.Tensor, beam: int, device: str
) -> float:
    """Captions a second from cached grids, `features` rows at a time (one batch)."""
    generation = model.captioner().generation_config(num_beams=beam)
    model.generate_from_features(features[:2], generation)  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    model.generate_from_features(features, generation)
    if device == "cuda":
        torch.cuda.synchronize()
    return len(features) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--images", type=int, default=300, help="Flickr8k train photos")
    parser.add_argument("--dev-images", type=int, default=50, help="Flickr8k dev photos")
    parser.add_argument("--steps", type=int, default=200, help="training steps")
    parser.add_argument(
        "--batch-size", type=int, help="images a step (default: 16 on CPU, the preset's on cuda)"
    )
    parser.add_argument("--workdir", type=Path, help="scratch folder (default: a temporary one)")
    parser.add_argument(
        "--data",
        type=Path,
        default=FLICKR8K_IMAGES.parent,
        help="a Flickr8k folder (captions.jsonl + images/; default: the shared dataset)",
    )
    args = parser.parse_args()
    for name in ("images", "dev_images", "steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be 1 or more")
    if args.batch_size is not None and args.batch_size < 1:
        parser.error("--batch-size must be 1 or more")
    if not (args.data / "captions.jsonl").is_file():
        parser.error(f"--data {args.data}: no captions.jsonl there (a Flickr8k folder)")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    header("The original set-up at full size (random CLIP ViT-B/32 weights)")
    print(f"load average at the start: {load_average()}")
    if args.device == "cuda":
        print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="original-setup-"))
    work.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    clip_dir = work / "clip-vit-b32-random"
    save_random_clip(clip_dir)
    print(
        f"random CLIP ViT-B/32 saved: {time.perf_counter() - started:.1f} s, {mib(size_of(clip_dir))}"
    )
    data = write_subset(work, args.data, args.images, args.dev_images)
    base = preset(PRESET)
    batch_size = args.batch_size or (base.batch_size if args.device == "cuda" else 16)
    config = preset(
        PRESET,
        data=str(data),
        output_dir=str(work / "run"),
        cache_dir=str(work / "cache"),
        encoder={"name": "clip", "source": str(clip_dir)},
        batch_size=batch_size,
        epochs=math.ceil(args.steps / math.ceil(args.images / batch_size)),
        warmup_steps=min(base.warmup_steps, args.steps // 4),
        early_stopping_patience=args.steps,  # random weights: dev CIDEr says nothing
        accelerator="gpu" if args.device == "cuda" else "cpu",
        devices=1,
    )
    decoder = config.decoder
    print(
        f"preset {PRESET}: decoder {decoder.d_model} x {decoder.n_heads} heads x "
        f"{decoder.n_layers} layers, token_embedding={decoder.token_embedding}, "
        f"captions_per_image={config.captions_per_image}, CLIP's whole vocabulary; "
        f"{args.images} train + {args.dev_images} dev photos, {batch_size} images a step, "
        f"device {args.device}"
    )
    print()

    # Feature extraction: the project's cache, filled on the device training runs on.
    started = time.perf_counter()
    cache, records = extract_features(config, [config.train_split, config.dev_split], False)
    seconds = time.perf_counter() - started
    images = sum(len(r) for r in records.values())
    cache_bytes = size_of(Path(cache.directory))
    print("## Feature extraction (CLIP ViT-B/32 vision tower, fp16 grids of 49 x 768)")
    print(f"{images} images in {seconds:.1f} s: {images / seconds:.1f} images/s")
    print(f"cache: {mib(cache_bytes)} ({cache_bytes / images / 1024:.1f} KiB an image)")
    print(f"peak memory: {peak_memory(args.device)}")
    print()

    # Training: the project's Lightning loop from the filled cache, timed step by step.
    timer = StepTimer(args.steps, args.device)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    best = train(config, progress=False, callbacks=[timer])
    seconds = time.perf_counter() - started
    warmup = min(5, len(timer.times) // 3)
    steady = timer.times[warmup:]
    print("## Training (cross-entropy, AdamW, the preset's precision)")
    print(
        f"{len(timer.times)} steps of {batch_size} captions: median {statistics.median(steady):.3f} s "
        f"a step (p90 {np.percentile(steady, 90):.3f} s, after {warmup} warm-up steps), "
        f"{batch_size / statistics.median(steady):.1f} captions/s"
    )
    print(f"whole run (with per-epoch validation and export): {seconds:.1f} s")
    weights = best / WEIGHTS_FILE
    print(f"saved model: {mib(size_of(best))} (weights {mib(weights.stat().st_size)})")
    print(f"peak memory: {peak_memory(args.device)}")
    print()

    # Evaluation: captions from cached grids, then `captioner eval`'s whole scoring.
    model = CaptionModel.from_pretrained(best).to(args.device)
    dev = records[config.dev_split]
    features = torch.from_numpy(np.stack([cache[record_key(r)] for r in dev])).float()
    features = features.to(args.device)
    print("## Evaluation")
    for beam in (1, 3):
        rate = captions_per_second(model, features, beam, args.device)
        print(f"beam {beam}: {rate:.1f} captions/s ({len(dev)} dev images in one batch, PyTorch)")
    scorer = CLIPScorer(str(clip_dir), device=args.device)
    scores, _ = evaluate(
        model,
        dev,
        {"num_beams": 3},
        cache_dir=config.cache_dir,
        meteor=False,
        progress=False,
        clip=scorer,
    )
    print(
        f"evaluate (beam 3, BLEU/ROUGE/CIDEr, token accuracy, CLIPScore): {scores['seconds']:.1f} s "
        f"for {scores['images']} images; CIDEr-D {scores['cider']:.3f}, "
        f"CLIP-S {scores['clip_score']:.3f}, RefCLIP-S {scores['refclip_score']:.3f} "
        "(random weights: meaningless)"
    )
    print(f"peak memory: {peak_memory(args.device)}")
    print()

    # ONNX export: the decoder graphs (fp32 and int8) and the CLIP vision tower.
    model = model.to("cpu")
    export_dir = work / "onnx"
    started = time.perf_counter()
    export_decoder(model.decoder, export_dir)
    decoder_seconds = time.perf_counter() - started
    started = time.perf_counter()
    model.encoder.export_onnx(export_dir / ENCODER_FILE)
    encoder_seconds = time.perf_counter() - started
    print("## ONNX export")
    print(
        f"decoder graphs (fp32 + int8): {decoder_seconds:.1f} s; encoder: {encoder_seconds:.1f} s"
    )
    for file in sorted(export_dir.glob("*.onnx")):
        print(f"{file.name}: {mib(file.stat().st_size)}")
    print(f"total: {mib(size_of(export_dir))}")
    print(f"peak memory: {peak_memory(args.device)}")
    print(f"load average at the end: {load_average()}")


if __name__ == "__main__":
    main()
