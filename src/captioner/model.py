"""`Captioner`: frozen encoder + decoder + tokenizer, with Hugging Face-style save/load."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from captioner.config import CaptionerConfig, GenerationConfig
from captioner.decoder import CaptionDecoder
from captioner.encoders import ImageEncoder, build_encoder
from captioner.generation import SpecialTokens, generate, max_new_tokens_limit
from captioner.hub import resolve_model_dir
from captioner.images import ImageInput, image_iterator
from captioner.model_card import write_model_card
from captioner.onnx.runtime import (
    DEFAULT_RUNTIME,
    OnnxDecoder,
    check_runtime,
    decoder_variant,
    exported_decoder,
    weights_version,
)
from captioner.tokenizer import CaptionTokenizer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"

log = logging.getLogger(__name__)


@dataclass
class Caption:
    text: str
    tokens: list[str]  # one display string per generated token
    token_ids: list[int]
    score: float
    # (tokens, layers, heads, grid_h, grid_w) cross-attention, when asked for
    attention: np.ndarray | None = None
    # With num_return_sequences K > 1, the image's other K - 1 captions: the next best beams in
    # order, or the other samples in the order drawn (samples may coincide).
    alternatives: list[Caption] = field(default_factory=list)

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
        runtime: str = DEFAULT_RUNTIME,
    ):
        """`runtime` ("auto", "onnx", "onnx-fp32", "torch"; see `captioner.onnx.runtime`)
        chooses what runs the built encoder and the decoder's inference on CPU."""
        super().__init__()
        self.runtime = check_runtime(runtime)
        # (weights_version, session) of the exported decoder, made at first use
        self._onnx: tuple[tuple, OnnxDecoder] | None = None
        # weights_version as from_pretrained loaded them: "auto" uses ONNX only while unchanged
        self._loaded_weights: tuple | None = None
        self.tokenizer = tokenizer or CaptionTokenizer()
        self.encoder = encoder or build_encoder(config.encoder, runtime)
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
        """One Caption per row of `features` (the encoder's tokens), with its alternatives when
        `generation.num_return_sequences` > 1; ValueError for invalid generation settings."""
        generation = generation or self.config.generation
        decoder = self.inference_decoder()
        memory = decoder.encode_image(features.to(self.device, self.decoder_dtype))
        ranked = [[h, *h.alternatives] for h in generate(decoder, memory, self.special, generation)]
        flat = [hypothesis for group in ranked for hypothesis in group]
        if return_attention:
            rows = [i for i, group in enumerate(ranked) for _ in group]
            attention = self._attention(decoder, memory[rows], flat)
        else:
            attention = [None] * len(flat)
        captions = iter(
            Caption(
                text=self.tokenizer.decode(hypothesis.ids),
                tokens=self.tokenizer.token_strings(hypothesis.ids),
                token_ids=hypothesis.ids,
                score=hypothesis.score,
                attention=grids,
            )
            for hypothesis, grids in zip(flat, attention)
        )
        results = []
        for group in ranked:
            best, *others = [next(captions) for _ in group]
            best.alternatives = others
            results.append(best)
        return results

    def inference_decoder(self) -> CaptionDecoder | OnnxDecoder:
        """What decodes: the exported graphs in ONNX Runtime where `runtime` asks for them (on
        CPU, in float32, not training), else the PyTorch decoder."""
        decoder = self.decoder
        if (
            self.runtime == "torch"
            or decoder.training
            or self.device.type != "cpu"
            or self.decoder_dtype != torch.float32
        ):
            return decoder
        weights = weights_version(decoder)
        if self.runtime == "auto" and weights != self._loaded_weights:
            return decoder  # built here or changed since loading (training): PyTorch
        if self._onnx is None or self._onnx[0] != weights:
            try:
                self._onnx = (weights, exported_decoder(decoder, decoder_variant(self.runtime)))
            except Exception as error:  # "auto" falls back to PyTorch; "onnx" was asked for
                if self.runtime != "auto":
                    raise
                if not isinstance(error, ImportError):  # installed, yet failed: worth a line
                    log.warning("decoding in PyTorch: the ONNX export failed: %s", error)
                self.runtime = "torch"
                return decoder
        return self._onnx[1]

    def _attention(self, decoder, memory: torch.Tensor, hypotheses) -> list[np.ndarray]:
        """Cross-attention behind each generated token, recomputed in one teacher-forced pass
        (the decoder is causal, so this equals what generation saw step by step)."""
        longest = max(len(h.ids) for h in hypotheses)
        ids = torch.full((len(hypotheses), longest + 1), self.tokenizer.end_id, device=self.device)
        ids[:, 0] = self.tokenizer.start_id
        for i, hypothesis in enumerate(hypotheses):
            ids[i, 1 : len(hypothesis.ids) + 1] = torch.tensor(hypothesis.ids)
        weights = decoder(ids, memory, need_weights=True).cross_attention
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

    def generation_config(self, **options) -> GenerationConfig:
        """This model's decoding defaults with `options` changed, validated: a ValueError names
        an unknown option or gives the allowed range (for the API, the CLI and the server)."""
        generation = self.config.generation.replace(**options)
        return generation.validate(max_new_tokens_limit(self.decoder))

    @torch.inference_mode()
    def caption(
        self,
        images: ImageInput | Iterable[ImageInput],
        beam_size: int | None = None,
        return_attention: bool = False,
        batch_size: int = 16,
        **generation_options,
    ) -> list[Caption]:
        """Caption one image (a path, bytes, binary file object, PIL image or array) or an
        iterable of them, read `batch_size` at a time (a generator too): one Caption per image,
        in order. `generation_options` are GenerationConfig fields; with
        num_return_sequences=K > 1 each Caption's `alternatives` hold the image's other K - 1.
        ValueError for invalid options, ImageLoadError for an input that is not an image."""
        if beam_size is not None:
            generation_options["beam_size"] = beam_size
        generation = self.generation_config(**generation_options)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        pending = image_iterator(images)
        captions: list[Caption] = []
        while chunk := list(islice(pending, batch_size)):
            pixels = self.pixels(chunk).to(self.device)
            features = self.encoder(pixels).tokens
            captions += self.generate_from_features(features, generation, return_attention)
        return captions

    def warm_up(self) -> None:
        """Do now what the first caption would otherwise do (export the decoder graphs into
        the cache, open the ONNX Runtime sessions): a server's first request waits for none of
        it."""
        size = self.encoder.preprocess.crop_size
        self.caption(np.zeros((size, size, 3), np.uint8), beam_size=1, max_new_tokens=1)

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
        write_model_card(directory, self.config)  # README.md with the hub's metadata block
        return directory

    @classmethod
    def from_pretrained(
        cls,
        source: str | Path | None = None,
        encoder: ImageEncoder | None = None,
        runtime: str = DEFAULT_RUNTIME,
    ) -> Captioner:
        """A saved folder, a Hugging Face hub id, `wandb:entity/project/name:version`, or (no
        argument) the model bundled with the package. `runtime="torch"` keeps ONNX Runtime out
        (see `captioner.onnx.runtime`)."""
        directory = resolve_model_dir(source)
        config = CaptionerConfig.load(directory / CONFIG_FILE)
        tokenizer = CaptionTokenizer.load(directory / TOKENIZER_FILE)
        model = cls(config, tokenizer, encoder, runtime)
        state = load_file(directory / WEIGHTS_FILE)
        model.decoder.load_state_dict({k: v.float() for k, v in state.items()})
        model._loaded_weights = weights_version(model.decoder)
        return model.eval()
