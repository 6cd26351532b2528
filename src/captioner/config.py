"""Configuration dataclasses: the one source of truth, saved as JSON inside every checkpoint."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class EncoderConfig:
    """Which frozen image encoder to run, by registry name and weights source."""

    name: str = "efficientnet-lite2"
    # Hub id or local folder for encoders that load weights from one (CLIP); unused otherwise.
    source: str | None = None


@dataclass
class DecoderConfig:
    """Shape of the transformer decoder. `vocab_size` and `image_dim` are filled in at build time."""

    vocab_size: int = 49408
    image_dim: int = 1280
    image_tokens: int = 81
    d_model: int = 512
    n_heads: int = 8
    n_layers: int = 6
    # Self-attention layers over the image tokens before the caption reads them, so each patch
    # carries context from the whole photo (0: the projected grid as it is).
    image_layers: int = 0
    mlp_ratio: int = 4
    max_length: int = 40
    dropout: float = 0.1


@dataclass
class GenerationConfig:
    """Decoding settings; the defaults are what `caption()` uses when nothing is passed."""

    beam_size: int = 3
    max_new_tokens: int = 30
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 3
    do_sample: bool = False
    top_p: float = 0.9
    temperature: float = 1.0
    seed: int | None = None


@dataclass
class CaptionerConfig:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    # Free-form facts about how the model was made (dataset, dev metrics), shown by the server.
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CaptionerConfig:
        return cls(
            encoder=_build(EncoderConfig, data.get("encoder", {})),
            decoder=_build(DecoderConfig, data.get("decoder", {})),
            generation=_build(GenerationConfig, data.get("generation", {})),
            metadata=dict(data.get("metadata", {})),
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> CaptionerConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))


def _build(kind: type, values: dict[str, Any]) -> Any:
    """Build a dataclass from a dict, refusing unknown keys so typos in configs surface early."""
    known = {f.name for f in dataclasses.fields(kind)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown {kind.__name__} fields: {sorted(unknown)}")
    return kind(**values)
