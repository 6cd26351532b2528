"""`Captioner`: frozen encoder + decoder + tokenizer, with Hugging Face-style save/load."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from captioner.config import CaptionerConfig, GenerationConfig
from captioner.decoder import CaptionDecoder
from captioner.encoders import ImageEncoder, build_encoder
from captioner.generation import SpecialTokens, generate
from captioner.hub import resolve_model_dir
from captioner.images import ImageInput
from captioner.tokenizer import CaptionTokenizer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"


@dataclass
class Caption:
    text: str
    tokens: list[str]  # one display string per generated token
    token_ids: list[int]
    score: float
    # (tokens, layers, heads, grid_h, grid_w) cross-attention, when asked for
    attention: np.ndarray | None = None

    @property
    def mean_attention(self) -> np.ndarray | None:
        """(tokens, grid_h, grid_w): the mean over layers and heads."""
        return None if self.attention is None else self.attention.mean(axis=(1, 2))


class Captioner(nn.Module):
    def __init__(
        self,
        config: CaptionerConfig,
        tokenizer: CaptionTokenizer | None = None,
        encoder: ImageEncoder | None = None,
    ):
        super().__init__()
        self.tokenizer = tokenizer or CaptionTokenizer()
        self.encoder = encoder or build_encoder(config.encoder)
        # The decoder's input sizes follow from the encoder and tokenizer: one source of truth.
        config.decoder = dataclasses.replace(
            config.decoder,
            vocab_size=self.tokenizer.vocab_size,
            image_dim=self.encoder.dim,
            image_tokens=self.encoder.grid_h * self.encoder.grid_w,
        )
        self.config = config
        self.decoder = CaptionDecoder(config.decoder)
        banned = [self.tokenizer.start_id]
        if self.tokenizer.unknown_id is not None:
            banned.append(self.tokenizer.unknown_id)
        self.special = SpecialTokens(self.tokenizer.start_id, self.tokenizer.end_id, tuple(banned))

    # ---- training-time pieces -------------------------------------------------------------
    def forward(
        self, features: torch.Tensor, ids: torch.Tensor, image_index: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Teacher-forced logits: `features` from the encoder, `ids` (captions, length) with the
        start token first; caption i belongs to image image_index[i] (default: image i).
        Position t predicts ids[:, t + 1]."""
        memory = self.decoder.encode_image(features)
        return self.decoder(ids, memory, image_index=image_index).logits

    # ---- inference ------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.decoder.parameters()).device

    def pixels(self, images: Sequence[ImageInput]) -> torch.Tensor:
        preprocess = self.encoder.preprocess
        return preprocess.batch([preprocess.load(image) for image in images])

    @torch.inference_mode()
    def generate_from_features(
        self,
        features: torch.Tensor,
        generation: GenerationConfig | None = None,
        return_attention: bool = False,
    ) -> list[Caption]:
        generation = generation or self.config.generation
        memory = self.decoder.encode_image(features.to(self.device, self.decoder_dtype))
        hypotheses = generate(self.decoder, memory, self.special, generation)
        attention = self._attention(memory, hypotheses) if return_attention else None
        captions = []
        for i, hypothesis in enumerate(hypotheses):
            captions.append(
                Caption(
                    text=self.tokenizer.decode(hypothesis.ids),
                    tokens=self.tokenizer.token_strings(hypothesis.ids),
                    token_ids=hypothesis.ids,
                    score=hypothesis.score,
                    attention=None if attention is None else attention[i],
                )
            )
        return captions

    def _attention(self, memory: torch.Tensor, hypotheses) -> list[np.ndarray]:
        """Cross-attention behind each generated token, recomputed in one teacher-forced pass
        (the decoder is causal, so this equals what generation saw step by step)."""
        longest = max(len(h.ids) for h in hypotheses)
        ids = torch.full((len(hypotheses), longest + 1), self.tokenizer.end_id, device=self.device)
        ids[:, 0] = self.tokenizer.start_id
        for i, hypothesis in enumerate(hypotheses):
            ids[i, 1 : len(hypothesis.ids) + 1] = torch.tensor(hypothesis.ids)
        weights = self.decoder(ids, memory, need_weights=True).cross_attention
        # Row t of the input predicted generated token t; keep one row per generated token.
        weights = weights.float().permute(0, 3, 1, 2, 4).cpu().numpy()
        grid = (self.encoder.grid_h, self.encoder.grid_w)
        return [
            weights[i, : len(h.ids)].reshape(len(h.ids), *weights.shape[2:4], *grid)
            for i, h in enumerate(hypotheses)
        ]

    @property
    def decoder_dtype(self) -> torch.dtype:
        return next(self.decoder.parameters()).dtype

    @torch.inference_mode()
    def caption(
        self,
        images: ImageInput | Sequence[ImageInput],
        beam_size: int | None = None,
        return_attention: bool = False,
        batch_size: int = 16,
        **generation_options,
    ) -> list[Caption]:
        """Caption paths, PIL images, bytes or arrays; a single image still gives a list."""
        if isinstance(images, (str, Path, bytes, bytearray, Image.Image, np.ndarray)):
            images = [images]
        if beam_size is not None:
            generation_options["beam_size"] = beam_size
        generation = dataclasses.replace(self.config.generation, **generation_options)
        captions: list[Caption] = []
        for start in range(0, len(images), batch_size):
            pixels = self.pixels(images[start : start + batch_size]).to(self.device)
            features = self.encoder(pixels).tokens
            captions += self.generate_from_features(features, generation, return_attention)
        return captions

    # ---- persistence ----------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, dtype: torch.dtype | None = None) -> Path:
        """config.json + model.safetensors (decoder only: the frozen encoder is referenced by
        name) + tokenizer.json. `dtype=torch.float16` halves the size on disk."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.config.save(directory / CONFIG_FILE)
        state = {
            name: (tensor.to(dtype) if dtype is not None else tensor).detach().contiguous().cpu()
            for name, tensor in self.decoder.state_dict().items()
        }
        # Tied weights are stored once; the embedding is the output layer.
        save_file(state, directory / WEIGHTS_FILE, metadata={"format": "pt"})
        self.tokenizer.save(directory / TOKENIZER_FILE)
        return directory

    @classmethod
    def from_pretrained(
        cls, source: str | Path | None = None, encoder: ImageEncoder | None = None
    ) -> Captioner:
        """A saved folder, a Hugging Face hub id, `wandb:entity/project/name:version`, or (no
        argument) the model bundled with the package."""
        directory = resolve_model_dir(source)
        config = CaptionerConfig.load(directory / CONFIG_FILE)
        tokenizer = CaptionTokenizer.load(directory / TOKENIZER_FILE)
        model = cls(config, tokenizer, encoder)
        state = load_file(directory / WEIGHTS_FILE)
        model.decoder.load_state_dict({k: v.float() for k, v in state.items()})
        return model.eval()
