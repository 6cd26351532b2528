"""CLIP through Hugging Face `transformers`: the vision tower as the production encoder, and the
frozen text tower as the decoder's token input (`decoder.token_embedding`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, cast

import torch
import torch.nn.functional as F
from torch import nn

from captioner.encoders.base import ImageEncoder
from captioner.transforms import Preprocess

DEFAULT_CLIP = "openai/clip-vit-base-patch32"

# The statistics CLIP was trained with (OpenAI's preprocessing).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class CLIPEncoder(ImageEncoder):
    """Patch tokens of the last layer (class token dropped): 7x7 of 768 for ViT-B/32."""

    def __init__(self, source: str | None = None):
        super().__init__()
        from transformers import CLIPVisionModel

        self.source = source or DEFAULT_CLIP
        # A hub id or a local folder; the hub is only contacted for ids not yet cached.
        with quiet_loading():
            self.net = CLIPVisionModel.from_pretrained(self.source)
        config = self.net.config
        self.name = f"clip:{self.source}"
        self.dim = config.hidden_size
        image_size = cast(int, config.image_size)  # transformers allows pairs; CLIP has ints
        self.grid_h = self.grid_w = image_size // cast(int, config.patch_size)
        self.preprocess = clip_preprocess(image_size)
        self.freeze()

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        hidden = self.net(pixel_values=pixels).last_hidden_state
        return hidden[:, 1:, :]

    def export_onnx(self, file: str | Path | IO[bytes]) -> None:
        """`pixels` (batch, 3, size, size) -> `features` (batch, tokens, dim), any batch: the
        graph `export_onnx` writes as `encoder.onnx` for the EfficientNet encoders."""
        from captioner.onnx.export import trace_image_encoder

        trace_image_encoder(_Features(self), self.preprocess.crop_size, file)


class _Features(nn.Module):
    def __init__(self, encoder: CLIPEncoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.encoder.features(pixels)


@contextmanager
def quiet_loading() -> Iterator[None]:
    """One tower from a whole CLIP checkpoint: transformers would list every weight of the
    other tower as unexpected, and draw a progress bar for loading a few hundred tensors."""
    from transformers.utils import logging

    level, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()


def clip_preprocess(image_size: int) -> Preprocess:
    """OpenAI's preprocessing for a CLIP vision tower of input `image_size`."""
    return Preprocess(
        crop_size=image_size,
        resize_size=image_size,
        mean=CLIP_MEAN,
        std=CLIP_STD,
        resample="bicubic",
    )


class CLIPTextTokens(nn.Module):
    """CLIP's text tower, frozen, as the decoder's token input: the token-embedding table
    (`contextual=False`), or the causal transformer's per-token hidden states after its final
    LayerNorm (`contextual=True`). Its tensors are non-persistent buffers: they come from
    `source` (hub id or folder) whenever the model is built, never from a captioner checkpoint,
    and no optimiser sees them. The transformer is written out here (not called through
    `transformers`) so that it can keep a key/value cache and run one new token per step: being
    causal, its states for earlier tokens never change."""

    # Buffers (`_keep` adds the per-layer ones, read through `_layer`).
    table: torch.Tensor
    position: torch.Tensor
    final_weight: torch.Tensor
    final_bias: torch.Tensor

    def __init__(self, source: str, contextual: bool):
        super().__init__()
        from transformers import CLIPTextModel
        from transformers.activations import ACT2FN

        with quiet_loading():
            model = CLIPTextModel.from_pretrained(source)
        text = getattr(model, "text_model", model)  # transformers 4 wraps the transformer
        config = text.config
        self.width = config.hidden_size
        self.vocab_size = config.vocab_size
        self.contextual = contextual
        self.register_buffer(
            "table", text.embeddings.token_embedding.weight.detach().clone(), persistent=False
        )
        self.n_layers = config.num_hidden_layers if contextual else 0
        self.n_heads = config.num_attention_heads
        self.max_positions = config.max_position_embeddings
        self.eps = cast(float, config.layer_norm_eps)  # None only in transformers' annotation
        self.activation = ACT2FN[config.hidden_act]
        if contextual:
            self._keep("position", text.embeddings.position_embedding.weight)
            for i, layer in enumerate(text.encoder.layers):
                for name, module in (
                    ("norm1", layer.layer_norm1),
                    ("query", layer.self_attn.q_proj),
                    ("key", layer.self_attn.k_proj),
                    ("value", layer.self_attn.v_proj),
                    ("out", layer.self_attn.out_proj),
                    ("norm2", layer.layer_norm2),
                    ("fc1", layer.mlp.fc1),
                    ("fc2", layer.mlp.fc2),
                ):
                    self._keep(f"l{i}_{name}_weight", module.weight)
                    self._keep(f"l{i}_{name}_bias", module.bias)
            self._keep("final_weight", text.final_layer_norm.weight)
            self._keep("final_bias", text.final_layer_norm.bias)

    def _keep(self, name: str, tensor: torch.Tensor) -> None:
        self.register_buffer(name, tensor.detach().clone(), persistent=False)

    def _layer(self, i: int, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        return getattr(self, f"l{i}_{name}_weight"), getattr(self, f"l{i}_{name}_bias")

    def forward(
        self,
        vectors: torch.Tensor,
        offset: int | torch.Tensor,
        past: Sequence[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """`vectors` (rows, length, width): table rows of tokens at positions `offset`... that
        follow `past` (each layer's key then value, (rows, heads, offset, head width); None:
        nothing before). Returns the hidden states (rows, length, width) and the keys and
        values now cached. Not contextual: `vectors` as they are, no cache."""
        if not self.contextual:
            return vectors, []
        # Heads split and merge by constant shapes (no row count): the ONNX step graph traces this.
        length, width = vectors.shape[1], self.width
        heads, head_width = self.n_heads, width // self.n_heads
        x = vectors + self.position[offset : offset + length]
        mask = None
        if length > 1:
            query_pos = torch.arange(length, device=x.device)[:, None]
            mask = torch.arange(length, device=x.device)[None, :] <= query_pos
            if past is not None:  # every cached position lies before the new tokens
                before = torch.ones(length, past[0].shape[2], dtype=torch.bool, device=x.device)
                mask = torch.cat([before, mask], dim=1)
        present = []
        for i in range(self.n_layers):
            h = F.layer_norm(x, (width,), *self._layer(i, "norm1"), self.eps)
            query, key, value = (
                F.linear(h, *self._layer(i, name))
                .unflatten(-1, (heads, head_width))
                .transpose(1, 2)
                for name in ("query", "key", "value")
            )
            if past is not None:
                key = torch.cat([past[2 * i], key], dim=2)
                value = torch.cat([past[2 * i + 1], value], dim=2)
            present += [key, value]
            mixed = F.scaled_dot_product_attention(query, key, value, mask)
            x = x + F.linear(mixed.transpose(1, 2).flatten(2), *self._layer(i, "out"))
            h = F.layer_norm(x, (width,), *self._layer(i, "norm2"), self.eps)
            h = F.linear(
                self.activation(F.linear(h, *self._layer(i, "fc1"))), *self._layer(i, "fc2")
            )
            x = x + h
        return F.layer_norm(x, (width,), self.final_weight, self.final_bias, self.eps), present
