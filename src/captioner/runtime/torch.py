"""The PyTorch model behind the runtime interface: for training (validation captions,
self-critical sampling), for `runtime="torch"`, and for encoders that have no ONNX graph."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from captioner.decoder import CaptionDecoder, KVCache

if TYPE_CHECKING:
    from captioner.torch_model import CaptionModel


def as_tensor(array: np.ndarray | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`array` on `like`'s device, in its dtype (features may already be a tensor there)."""
    tensor = array if isinstance(array, torch.Tensor) else torch.from_numpy(np.asarray(array))
    return tensor.to(like.device, like.dtype)


class TorchRuntime:
    """A `CaptionModel`'s encoder and decoder, on whatever device and dtype it has."""

    name = "torch"

    def __init__(self, model: CaptionModel):
        self.model = model
        self.preprocess = model.encoder.preprocess
        self.grid = (model.encoder.grid_h, model.encoder.grid_w)
        self.max_length = model.config.decoder.max_length
        self.parameters: int | None = sum(p.numel() for p in model.decoder.parameters())

    @torch.inference_mode()
    def encode(self, pixels: np.ndarray) -> np.ndarray:
        tensor = torch.from_numpy(np.ascontiguousarray(pixels, np.float32)).to(self.model.device)
        return self.model.encoder(tensor).tokens.float().cpu().numpy()

    @torch.inference_mode()
    def start(
        self, features: np.ndarray | torch.Tensor, rows_per_image: int, attention: bool = True
    ) -> TorchDecoding:
        decoder = self.model.decoder
        weight = next(decoder.parameters())
        memory = decoder.encode_image(as_tensor(features, weight))
        return TorchDecoding(decoder, memory, attention)


class TorchDecoding:
    def __init__(self, decoder: CaptionDecoder, memory: torch.Tensor, attention: bool):
        self.decoder = decoder
        self.memory = memory  # (images, T, d): each image's rows are consecutive
        self.cache: KVCache = decoder.new_cache()
        self.attention = attention

    @torch.inference_mode()
    def step(self, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        ids = torch.from_numpy(np.asarray(tokens, np.int64)).to(self.memory.device)[:, None]
        output = self.decoder(ids, self.memory, self.cache, need_weights=self.attention)
        logits = output.logits[:, -1].float().cpu().numpy()
        if output.cross_attention is None:
            return logits, None
        # (rows, L, H, 1, T) -> (rows, L, H, T)
        return logits, output.cross_attention[:, :, :, -1].float().cpu().numpy()

    def keep(self, rows: np.ndarray, images: np.ndarray | None = None) -> None:
        device = self.memory.device
        image_rows = None if images is None else torch.from_numpy(np.asarray(images)).to(device)
        self.cache.reorder(torch.from_numpy(np.asarray(rows)).to(device), image_rows)
        if image_rows is not None:
            self.memory = self.memory[image_rows]
