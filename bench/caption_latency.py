"""Caption latency (one image: p50/p95) and batch throughput on CPU, against two peers.

Ours: the bundled model (EfficientNet-Lite2 + 3-layer decoder) as `Captioner.from_pretrained()`
runs it (the encoder and the int8 decoder graphs in ONNX Runtime), with the float32 decoder graphs
(`runtime="onnx-fp32"`), all in PyTorch (`runtime="torch"`, the encoder too), and the same
decoder (int8 graphs) over CLIP ViT-B/32 (in PyTorch). Peers, built from their configs with
random weights (speed does not depend on weights): Hugging Face `VisionEncoderDecoderModel`
shaped like nlpconnect/vit-gpt2-image-captioning (ViT-base/16 at 224 + GPT-2 124M) and
`BlipForConditionalGeneration` shaped like BLIP-base (384).
Every captioner generates exactly `--tokens` tokens (ours: end token banned; peers:
min_new_tokens = max_new_tokens). Each timed call starts from JPEG bytes: decoding, resizing and
normalising (the same PIL/numpy code for everyone, at each model's input size) are included.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from _common import (
    force_length,
    header,
    load_bundled,
    measure,
    median,
    percentile,
    quiet_transformers,
    random_clip_model,
    sample_images,
    synthetic_jpeg,
    with_threads,
)

from captioner import Captioner, GenerationConfig
from captioner.images import load_image
from captioner.transforms import Preprocess

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# caption(images, num_beams) for one list of JPEG bytes
Captioning = Callable[[list[bytes], int], object]


def ours(model: Captioner, tokens: int) -> Captioning:
    force_length(model)

    def run(images: list[bytes], beams: int) -> object:
        return model.caption(images, num_beams=beams, max_new_tokens=tokens, batch_size=len(images))

    return run


def hf_peer(model: torch.nn.Module, preprocess: Preprocess, tokens: int, **extra) -> Captioning:
    model.eval()

    def run(images: list[bytes], beams: int) -> object:
        with torch.inference_mode():
            pixels = torch.from_numpy(preprocess.batch([load_image(image) for image in images]))
            return model.generate(
                pixel_values=pixels,
                num_beams=beams,
                do_sample=False,
                min_new_tokens=tokens,
                max_new_tokens=tokens,
                **extra,
            )

    return run


def vit_gpt2(tokens: int) -> Captioning:
    from transformers import (
        GPT2Config,
        VisionEncoderDecoderConfig,
        VisionEncoderDecoderModel,
        ViTConfig,
    )

    gpt2 = GPT2Config(add_cross_attention=True, is_decoder=True)
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(ViTConfig(), gpt2)
    config.decoder_start_token_id = config.pad_token_id = config.eos_token_id = gpt2.eos_token_id
    model = VisionEncoderDecoderModel(config=config)
    # nlpconnect's image processor: resize to 224x224, mean = std = 0.5
    preprocess = Preprocess(224, 224, (0.5,) * 3, (0.5,) * 3, "bilinear")
    end = gpt2.eos_token_id
    return hf_peer(model, preprocess, tokens, decoder_start_token_id=end, pad_token_id=end)


def blip(tokens: int) -> Captioning:
    from transformers import BlipConfig, BlipForConditionalGeneration

    model = BlipForConditionalGeneration(BlipConfig())
    preprocess = Preprocess(384, 384, CLIP_MEAN, CLIP_STD, "bicubic")
    return hf_peer(model, preprocess, tokens)


def latency(run: Captioning, images: list[bytes], beams: int, repeats: int) -> dict[str, float]:
    """One image per call, cycling through the sample."""
    position = iter(range(10**9))

    def call() -> None:
        run([images[next(position) % len(images)]], beams)

    times = measure(call, repeats)
    return {"p50": median(times) * 1000, "p95": percentile(times, 95) * 1000}


def throughput(run: Captioning, images: list[bytes], beams: int, repeats: int) -> float:
    return len(images) / median(measure(lambda: run(images, beams), repeats, warmup=1))


def split(model: Captioner, images: list[bytes], tokens: int, repeats: int, batch: int) -> float:
    """Where one greedy caption's time goes: decode + preprocess, encoder, decoding. Returns
    the encoder's images/s alone on `batch` preprocessed images: the ceiling of any batch rate."""
    pixels = model.pixels(images[:1])
    features = model.encode(pixels)
    generation = GenerationConfig(num_beams=1, max_new_tokens=tokens)
    phone = [synthetic_jpeg(4032, 3024)]
    parts = {
        "image decode + preprocess": lambda: model.pixels(images[:1]),
        "  the same for a 12 MP photo": lambda: model.pixels(phone),
        "encoder": lambda: model.encode(pixels),
        f"decoding ({tokens} tokens, greedy)": lambda: model.generate_from_features(
            features, generation
        ),
    }
    for name, part in parts.items():
        print(f"    {name:32s} {median(measure(part, repeats)) * 1000:7.1f} ms")
    batch_pixels = model.pixels(images[:batch])
    rate = batch / median(measure(lambda: model.encode(batch_pixels), max(2, repeats // batch)))
    print(f"    encoder alone, batch {batch}: {rate:.2f} images/s (the ceiling of the batch rate)")
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", help="model folder (default: the bundled model)")
    parser.add_argument("--tokens", type=int, default=12, help="tokens every captioner generates")
    parser.add_argument("--repeats", type=int, default=40, help="timed calls per figure (ours)")
    parser.add_argument("--peer-repeats", type=int, default=10, help="timed calls (peers)")
    parser.add_argument("--batch", type=int, default=8, help="images per call for throughput")
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument(
        "--threads", type=int, help="intra-op threads, PyTorch's and ONNX Runtime's (default: all)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)  # the ONNX Runtime sessions are given it below
    quiet_transformers()

    header("Caption latency and throughput, CPU")
    torch.manual_seed(0)
    images = sample_images(max(args.batch, 8))
    bundled, source = load_bundled(args.model, threads=args.threads)
    fp32, _ = load_bundled(args.model, runtime="onnx-fp32", threads=args.threads)
    plain, _ = load_bundled(args.model, runtime="torch")  # what ONNX Runtime replaces
    clip = with_threads(random_clip_model(bundled), args.threads)
    # name -> (captioning, timed calls, our model for the time split)
    captioners: dict[str, tuple[Captioning, int, Captioner | None]] = {
        f"captioner ({source})": (ours(bundled, args.tokens), args.repeats, bundled),
        f"captioner ({source}), float32 decoder graphs": (
            ours(fp32, args.tokens),
            args.repeats,
            fp32,
        ),
        f"captioner ({source}), all in PyTorch": (ours(plain, args.tokens), args.repeats, plain),
        "captioner (CLIP ViT-B/32, random weights)": (ours(clip, args.tokens), args.repeats, clip),
    }
    if not args.no_peers:
        captioners["HF ViT-GPT2 (nlpconnect architecture)"] = (
            vit_gpt2(args.tokens),
            args.peer_repeats,
            None,
        )
        captioners["HF BLIP-base (architecture)"] = (blip(args.tokens), args.peer_repeats, None)

    print(f"{args.tokens} tokens per caption; batch {args.batch} for images/s\n")
    results: dict[str, dict[str, float]] = {}
    for name, (run, repeats, model) in captioners.items():
        greedy = latency(run, images, 1, repeats)
        beam = latency(run, images, 3, repeats)
        batch_greedy = throughput(run, images[: args.batch], 1, max(2, repeats // args.batch))
        batch_beam = throughput(run, images[: args.batch], 3, max(2, repeats // args.batch))
        results[name] = {"greedy": greedy["p50"], "beam": beam["p50"], "batch": batch_greedy}
        print(name)
        print(f"  one image, greedy:  p50 {greedy['p50']:7.1f} ms   p95 {greedy['p95']:7.1f} ms")
        print(f"  one image, beam 3:  p50 {beam['p50']:7.1f} ms   p95 {beam['p95']:7.1f} ms")
        print(f"  batch, greedy:      {batch_greedy:7.2f} images/s")
        print(f"  batch, beam 3:      {batch_beam:7.2f} images/s")
        if model is not None:
            print("  split of one greedy caption (medians):")
            results[name]["encoder"] = split(model, images, args.tokens, repeats, args.batch)
        print()

    ours_name = next(iter(results))
    for name, figures in results.items():
        if name != ours_name:
            print(
                f"{ours_name} against {name}: one image p50 "
                f"greedy x{figures['greedy'] / results[ours_name]['greedy']:.1f}, "
                f"beam 3 x{figures['beam'] / results[ours_name]['beam']:.1f} faster; "
                f"batch images/s (greedy) x{results[ours_name]['batch'] / figures['batch']:.1f}"
                f" (the encoder alone: x{results[ours_name]['encoder'] / figures['batch']:.1f})"
            )


if __name__ == "__main__":
    main()
