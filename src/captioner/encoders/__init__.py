"""Frozen image encoders, built by name: `build_encoder(EncoderConfig(name=...))`. With
`trained_blocks`, an EfficientNet-Lite's grid stops before its last blocks, which the decoder
trains (`ImageEncoder.trainable_top`)."""

from __future__ import annotations

from captioner.config import EncoderConfig
from captioner.encoders.base import EncoderOutput, ImageEncoder
from captioner.runtime.base import DEFAULT_RUNTIME

ENCODER_NAMES = ("efficientnet-lite0", "efficientnet-lite2", "clip")


def build_encoder(config: EncoderConfig, runtime: str = DEFAULT_RUNTIME) -> ImageEncoder:
    """`runtime` chooses ONNX Runtime or PyTorch for the encoders that have both (EfficientNet);
    CLIP runs in PyTorch. ValueError for an unknown name or `trained_blocks` it cannot have."""
    if config.name not in ENCODER_NAMES:
        raise ValueError(
            f"unknown encoder {config.name!r}; choose one of {', '.join(ENCODER_NAMES)}"
        )
    config.validate()
    if config.name == "clip":
        from captioner.encoders.clip import CLIPEncoder

        return CLIPEncoder(config.source)
    if config.name.startswith("efficientnet-lite"):
        from captioner.encoders.efficientnet import EfficientNetLiteEncoder

        return EfficientNetLiteEncoder(
            config.name, runtime=runtime, trained_blocks=config.trained_blocks
        )
    raise AssertionError(f"{config.name} is in ENCODER_NAMES with no way to build it")


__all__ = ["ENCODER_NAMES", "EncoderOutput", "ImageEncoder", "build_encoder"]
