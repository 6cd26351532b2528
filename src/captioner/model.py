"""`Captioner`: a model ready to caption, whatever runs it (ONNX Runtime by default, no torch).

`Captioner.from_pretrained` reads a model folder (`captioner.hub`): its exported graphs when it
has them (`captioner.json`, what `pip install captioner` runs), else its PyTorch weights (with
`captioner[train]`), exported once into the cache for ONNX Runtime or run in PyTorch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from captioner.config import CaptionerConfig, GenerationConfig, check_option_names
from captioner.decoding import Hypothesis, SpecialTokens, generate, max_new_tokens_limit
from captioner.hub import (
    DESCRIPTION_FILE,
    load_config,
    load_tokenizer,
    missing_extra,
    resolve_model_dir,
)
from captioner.images import ImageInput, image_iterator
from captioner.runtime.base import DEFAULT_RUNTIME, Runtime, check_runtime, decoder_variant
from captioner.tokenizer import CaptionTokenizer
from captioner.transforms import Preprocess


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

    def to_pipeline(self) -> list[dict[str, str]]:
        """This caption and its alternatives as Hugging Face's image-to-text pipeline gives one
        image's captions (`[{"generated_text": ...}, ...]`), for code written against it."""
        return [{"generated_text": caption.text} for caption in (self, *self.alternatives)]


def special_tokens(tokenizer: CaptionTokenizer) -> SpecialTokens:
    """Start, end, and the ids a caption never contains (start; the compact "unknown")."""
    banned = [tokenizer.start_id]
    if tokenizer.unknown_id is not None:
        banned.append(tokenizer.unknown_id)
    return SpecialTokens(tokenizer.start_id, tokenizer.end_id, tuple(banned))


class Captioner:
    """A configuration, a tokenizer and a runtime: everything `caption()` needs."""

    def __init__(self, config: CaptionerConfig, tokenizer: CaptionTokenizer, runtime: Runtime):
        self.config = config
        self.tokenizer = tokenizer
        self.runtime = runtime
        self.special = special_tokens(tokenizer)

    @property
    def preprocess(self) -> Preprocess:
        return self.runtime.preprocess

    @property
    def grid(self) -> tuple[int, int]:
        """(grid_h, grid_w) of the attention maps."""
        return self.runtime.grid

    @property
    def max_new_tokens_limit(self) -> int:
        return max_new_tokens_limit(self.runtime.max_length)

    def pixels(self, images: Sequence[ImageInput]) -> np.ndarray:
        """(batch, 3, S, S) normalised pixels; ImageLoadError for an input that is no image."""
        return self.preprocess.batch(images)

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        return self.runtime.encode(pixels)

    def generation_config(self, **options: Any) -> GenerationConfig:
        """This model's decoding defaults with `options` changed, validated: a ValueError names
        an unknown option or gives the allowed range (for the API, the CLI and the server)."""
        generation = self.config.generation.replace(**options)
        return generation.validate(self.max_new_tokens_limit)

    def generate_from_features(
        self,
        features: np.ndarray,
        generation: GenerationConfig | None = None,
        return_attention: bool = False,
    ) -> list[Caption]:
        """One Caption per row of `features` (the encoder's tokens), with its alternatives when
        `generation.num_return_sequences` > 1; ValueError for invalid generation settings."""
        generation = generation or self.config.generation
        found = generate(self.runtime, features, self.special, generation, return_attention)
        return [self._caption(h, [self._caption(a) for a in h.alternatives]) for h in found]

    def _caption(
        self, hypothesis: Hypothesis, alternatives: list[Caption] | None = None
    ) -> Caption:
        attention = hypothesis.attention
        if attention is not None:  # (tokens, L, H, T) -> (tokens, L, H, grid_h, grid_w)
            attention = attention.reshape(len(hypothesis.ids), *attention.shape[1:3], *self.grid)
        return Caption(
            text=self.tokenizer.decode(hypothesis.ids),
            tokens=self.tokenizer.token_strings(hypothesis.ids),
            token_ids=hypothesis.ids,
            score=hypothesis.score,
            attention=attention,
            alternatives=alternatives or [],
        )

    def caption(
        self,
        images: ImageInput | Iterable[ImageInput],
        num_beams: int | None = None,
        return_attention: bool = False,
        batch_size: int = 16,
        **generation_options: Any,
    ) -> list[Caption]:
        """Caption one image (a path, bytes, binary file object, PIL image or array) or an
        iterable of them, read `batch_size` at a time (a generator too): one Caption per image,
        in order. `generation_options` are GenerationConfig fields; with
        num_return_sequences=K > 1 each Caption's `alternatives` hold the image's other K - 1.
        ValueError for invalid options, ImageLoadError for an input that is not an image, a
        TypeError naming the new name of an option passed by its old one (beam_size)."""
        check_option_names("caption", generation_options)
        if num_beams is not None:
            generation_options["num_beams"] = num_beams
        generation = self.generation_config(**generation_options)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        pending = image_iterator(images)
        captions: list[Caption] = []
        while chunk := list(islice(pending, batch_size)):
            features = self.encode(self.pixels(chunk))
            captions += self.generate_from_features(features, generation, return_attention)
        return captions

    def warm_up(self) -> None:
        """Do now what the first caption would otherwise do (open the ONNX Runtime sessions):
        a server's first request waits for none of it."""
        size = self.preprocess.crop_size
        self.caption(np.zeros((size, size, 3), np.uint8), num_beams=1, max_new_tokens=1)

    @classmethod
    def from_pretrained(
        cls, source: str | Path | None = None, runtime: str = DEFAULT_RUNTIME
    ) -> Captioner:
        """A model name (`flickr8k-effnet`, the bundled one, also with no argument), a saved or
        exported folder, a Hugging Face hub id or `wandb:entity/project/name:version`.
        `runtime`: see `captioner.runtime.base`. ModelLoadError (one line) when the folder cannot
        be read; MissingExtraError when only PyTorch could run it and torch is not installed."""
        check_runtime(runtime)
        directory = resolve_model_dir(source)
        config = load_config(directory)
        tokenizer = load_tokenizer(directory)
        if runtime != "torch" and (directory / DESCRIPTION_FILE).is_file():
            from captioner.runtime.onnx import OnnxRuntime, read_description

            if decoder_variant(runtime) in read_description(directory)["variants"]:
                return cls(config, tokenizer, OnnxRuntime(directory, decoder_variant(runtime)))
        try:
            from captioner.torch_model import CaptionModel
        except ImportError:
            raise missing_extra(f"running {directory} (it has no {DESCRIPTION_FILE})") from None
        encoder_runtime = "torch" if runtime == "torch" else DEFAULT_RUNTIME
        return CaptionModel.from_pretrained(directory, encoder_runtime=encoder_runtime).captioner(
            runtime
        )
