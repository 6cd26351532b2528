"""Export a `Captioner` to ONNX: the graphs and `captioner.json` described in `captioner.onnx`.

The decoder graphs are traced from `CaptionDecoder` itself (its KV-cache path, one token), so
they compute what PyTorch computes; the int8 variant quantises their MatMul/Gemm weights with
ONNX Runtime's dynamic quantisation (activations quantised per call, no calibration data).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING

import torch
from torch import nn

from captioner.decoder import CaptionDecoder

if TYPE_CHECKING:
    from captioner.model import Captioner
    from captioner.tokenizer import CaptionTokenizer

FORMAT = "captioner-onnx"
FORMAT_VERSION = 1
OPSET = 17
DESCRIPTION_FILE = "captioner.json"
ENCODER_FILE = "encoder.onnx"
VARIANTS = ("fp32", "int8")
# variant -> graph -> file; the encoder stays float32 in both (int8 convolutions lost accuracy
# and speed, see the README's "Exported model (ONNX)")
FILES = {
    "fp32": {"image": "decoder_image.onnx", "step": "decoder_step.onnx"},
    "int8": {"image": "decoder_image.int8.onnx", "step": "decoder_step.int8.onnx"},
}
# The caption text from the pieces: regexes applied in order (JavaScript replacement syntax);
# what `tokenizer.detokenize` does.
DETOKENIZE = ((" ([.,!?;:])", "$1"), (" '(s|t|re|ve|m|ll|d)\\b", "'$1"))


def trace_to_onnx(
    module: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    file: str | Path | IO[bytes],
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: dict[str, dict[int, str]],
) -> None:
    """The TorchScript exporter (no onnxscript needed), every graph at one opset."""
    with warnings.catch_warnings():  # the exporter's deprecation, tracer and folding notes
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(),
            inputs,
            file,
            dynamo=False,
            opset_version=OPSET,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes=dynamic_axes,
        )


class ImageMemory(nn.Module):
    """Encoder features to every layer's cross-attention keys and values (batch, L, 2, H, T, E)."""

    def __init__(self, decoder: CaptionDecoder):
        super().__init__()
        self.decoder = decoder

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        memory = self.decoder.encode_image(features)
        layers = [torch.stack(b.cross_attention.project_kv(memory), 1) for b in self.decoder.blocks]
        return torch.stack(layers, 1)


class DecodingStep(nn.Module):
    """One token per row through `CaptionDecoder.forward` with its caches filled from tensors."""

    def __init__(self, decoder: CaptionDecoder):
        super().__init__()
        self.decoder = decoder

    def forward(
        self, ids: torch.Tensor, past_kv: torch.Tensor, cross_kv: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cache = self.decoder.new_cache()
        for layer in range(len(self.decoder.blocks)):
            cache.self_kv[layer] = (past_kv[:, layer, 0], past_kv[:, layer, 1])
            cache.cross_kv[layer] = (cross_kv[:, layer, 0], cross_kv[:, layer, 1])
        output = self.decoder(ids, None, cache, need_weights=True)
        present = torch.stack([torch.stack(kv, 1) for kv in cache.self_kv], 1)
        return output.logits[:, -1], present, output.cross_attention[:, :, :, -1]


def kv_shape(config, batch: int, length: int) -> tuple[int, ...]:
    """(batch, layers, 2, heads, length, head width): the layout of past_kv and cross_kv."""
    heads = config.n_heads
    return (batch, config.n_layers, 2, heads, length, config.d_model // heads)


def export_decoder(
    decoder: CaptionDecoder, directory: str | Path, variants: Sequence[str] = VARIANTS
) -> None:
    """decoder_image and decoder_step, in each of `variants`, into `directory`."""
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown or not variants:
        raise ValueError(f"ONNX variants must be among {', '.join(VARIANTS)}, got {variants}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = decoder.config
    was_training = decoder.training
    decoder.eval()
    with tempfile.TemporaryDirectory() as scratch:
        fp32 = {
            graph: directory / name if "fp32" in variants else Path(scratch) / name
            for graph, name in FILES["fp32"].items()
        }
        features = torch.zeros(2, config.image_tokens, config.image_dim)
        with torch.no_grad():
            cross = ImageMemory(decoder)(features)
        trace_to_onnx(
            ImageMemory(decoder),
            (features,),
            fp32["image"],
            ["features"],
            ["cross_kv"],
            {"features": {0: "batch"}, "cross_kv": {0: "batch"}},
        )
        # Traced at a past of 2 tokens: the position and the concatenation follow past_kv's shape.
        trace_to_onnx(
            DecodingStep(decoder),
            (torch.zeros(2, 1, dtype=torch.long), torch.zeros(kv_shape(config, 2, 2)), cross),
            fp32["step"],
            ["ids", "past_kv", "cross_kv"],
            ["logits", "present_kv", "cross_attention"],
            {
                "ids": {0: "batch"},
                "past_kv": {0: "batch", 4: "past"},
                "cross_kv": {0: "batch"},
                "logits": {0: "batch"},
                "present_kv": {0: "batch", 4: "past_plus_one"},
                "cross_attention": {0: "batch"},
            },
        )
        if "int8" in variants:
            for graph, name in FILES["int8"].items():
                quantize(fp32[graph], directory / name)
    decoder.train(was_training)


class _QuantizerAdvice(logging.Filter):
    """The quantiser logs advice for calibrated image models on the root logger at every call."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


def quantize(source: Path, target: Path) -> None:
    """int8 weights for every MatMul/Gemm, activations quantised per call (dynamic)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    advice = _QuantizerAdvice()
    logging.getLogger().addFilter(advice)
    try:
        quantize_dynamic(
            source,
            target,
            op_types_to_quantize=["MatMul", "Gemm"],
            weight_type=QuantType.QInt8,
        )
    finally:
        logging.getLogger().removeFilter(advice)


def token_pieces(tokenizer: CaptionTokenizer) -> list[str]:
    """Each model id's text as the byte-level BPE decodes it, a word-final piece ending in one
    space (special ids: ""): concatenated, they are the caption before `detokenize`. Every
    piece of CLIP's vocabulary used in captions is whole UTF-8 (tests/test_onnx.py checks)."""
    return [tokenizer._bpe.decode(tokenizer._to_clip([i])) for i in range(tokenizer.vocab_size)]


def describe(model: Captioner, variants: Sequence[str] = VARIANTS) -> dict:
    """`captioner.json`: what a runtime without Python needs to caption with the graphs."""
    encoder, tokenizer, decoder = model.encoder, model.tokenizer, model.config.decoder
    preprocess = encoder.preprocess
    from captioner.transforms import REDUCING_GAP

    pieces = token_pieces(tokenizer)
    generation = dataclasses.asdict(model.config.generation)
    generation.pop("seed", None)
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "variants": {v: {"encoder": ENCODER_FILE, **FILES[v]} for v in variants},
        "encoder": {
            "name": encoder.name,
            "grid_h": encoder.grid_h,
            "grid_w": encoder.grid_w,
            "dim": encoder.dim,
        },
        "preprocess": {
            "resize_size": preprocess.resize_size,
            "crop_size": preprocess.crop_size,
            "resample": preprocess.resample,
            "reducing_gap": REDUCING_GAP,
            "mean": list(preprocess.mean),
            "std": list(preprocess.std),
            "layout": "NCHW",
        },
        "decoder": {
            "n_layers": decoder.n_layers,
            "n_heads": decoder.n_heads,
            "head_dim": decoder.d_model // decoder.n_heads,
            "d_model": decoder.d_model,
            "image_tokens": decoder.image_tokens,
            "max_length": decoder.max_length,
            "vocab_size": decoder.vocab_size,
        },
        "tokens": {
            "start_id": model.special.start,
            "end_id": model.special.end,
            "banned_ids": list(model.special.banned),
            "pieces": pieces,
            "detokenize": [list(rule) for rule in DETOKENIZE],
        },
        "generation": generation,
    }


def export_onnx(
    model: Captioner, directory: str | Path, variants: Sequence[str] = VARIANTS
) -> Path:
    """The whole model (encoder, decoder graphs, captioner.json) into `directory`."""
    from captioner.encoders.efficientnet import EfficientNetLiteEncoder

    if not isinstance(model.encoder, EfficientNetLiteEncoder):
        raise ValueError(
            f"ONNX export supports the EfficientNet-Lite encoders; this model uses "
            f"{model.encoder.name!r}"
        )
    directory = Path(directory)
    export_decoder(model.decoder, directory, variants)
    model.encoder.export_onnx(directory / ENCODER_FILE)
    description = describe(model, variants)
    (directory / DESCRIPTION_FILE).write_text(json.dumps(description, indent=1) + "\n")
    return directory


def replace_directory(source: Path, target: Path) -> None:
    """Move a finished export into place; a concurrent exporter that got there first wins."""
    try:
        source.rename(target)
    except OSError:
        if not target.is_dir():
            raise
        shutil.rmtree(source, ignore_errors=True)
