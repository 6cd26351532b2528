"""The JSON the API answers, typed: also what /docs and /openapi.json describe."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from captioner.config import GenerationConfig
from captioner.model import Caption


class ErrorResponse(BaseModel):
    error: str


class HealthResponse(BaseModel):
    status: str
    model: str


class EncoderInfo(BaseModel):
    name: str
    grid_h: int
    grid_w: int
    image_size: int = Field(description="the side of the square the encoder sees")


class DecoderInfo(BaseModel):
    layers: int
    heads: int
    d_model: int
    vocab_size: int
    parameters: int | None = Field(description="the decoder's weights, where the model says")


class ServerInfo(BaseModel):
    """The server's limits: what a client may send."""

    batching: bool
    max_batch_size: int
    batch_wait_ms: float
    max_upload_mb: float
    max_pixels: int
    max_queue: int
    request_timeout_s: float
    max_num_beams: int
    max_new_tokens: int = Field(description="the most tokens this model can write")


class ModelInfo(BaseModel):
    source: str
    encoder: EncoderInfo
    decoder: DecoderInfo
    # The model's decoding defaults: what /api/caption uses for a field a request leaves out.
    generation: GenerationConfig
    metadata: dict[str, Any]
    server: ServerInfo


class ImageSize(BaseModel):
    width: int
    height: int


class CropBox(BaseModel):
    """The part of the image the model saw (it centre-crops), as fractions of width and height:
    the attention grid covers this box."""

    x: float
    y: float
    width: float
    height: float


class AttentionMaps(BaseModel):
    grid_h: int
    grid_w: int
    layers: int
    heads: int
    per_head: list[list[list[list[float]]]]  # tokens x layers x heads x (grid_h * grid_w)
    mean: list[list[float]]  # tokens x (grid_h * grid_w): the mean over layers and heads
    crop: CropBox


class Timings(BaseModel):
    """Milliseconds: reading the upload, decoding and preprocessing it, waiting for the model,
    the batch's model call, and all of it."""

    read: float
    decode: float
    queue: float
    inference: float
    total: float


class CaptionResponse(BaseModel):
    caption: str
    tokens: list[str]
    score: float
    attention: AttentionMaps | None
    image: ImageSize
    timings_ms: Timings
    batch_size: int


def crop_box(crop: tuple[float, float, float, float]) -> CropBox:
    """A PreparedImage's `crop` (left, top, right, bottom, as fractions) as the API sends it."""
    left, top, right, bottom = crop
    return CropBox(x=left, y=top, width=right - left, height=bottom - top)


def attention_maps(caption: Caption, crop: CropBox) -> AttentionMaps | None:
    if caption.attention is None:
        return None
    tokens, layers, heads, grid_h, grid_w = caption.attention.shape
    cells = grid_h * grid_w
    # float64 before rounding, so that 0.0201 is sent as 0.0201, not as float32's 0.020099999...
    weights = caption.attention.astype(np.float64)
    per_head = np.round(weights.reshape(tokens, layers, heads, cells), 4)
    mean = np.round(weights.mean(axis=(1, 2)).reshape(tokens, cells), 4)
    # model_construct: the values are ours and well-formed; validating ~50k floats is slow.
    return AttentionMaps.model_construct(
        grid_h=grid_h,
        grid_w=grid_w,
        layers=layers,
        heads=heads,
        per_head=per_head.tolist(),
        mean=mean.tolist(),
        crop=crop,
    )
