"""Configuration dataclasses: the one source of truth, saved as JSON inside every checkpoint."""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import numbers
import re
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance


@dataclass
class EncoderConfig:
    """Which frozen image encoder to run, by registry name and weights source."""

    name: str = "efficientnet-lite2"
    # Hub id or local folder for encoders that load weights from one (CLIP); unused otherwise.
    source: str | None = None
    # EfficientNet-Lite only: its last N MBConv blocks and its head convolution (with ReLU6) are
    # trained with the decoder, starting from the ImageNet weights, so the encoder's top adapts
    # to captions while training still reads cached grids: those are the activations of the
    # block before them (the top is part of the decoder, `EfficientNetTop`). 0: the whole
    # encoder frozen.
    trained_blocks: int = 0

    def validate(self) -> EncoderConfig:
        """ValueError for a `trained_blocks` this encoder cannot have; returns self."""
        blocks = EFFICIENTNET_LITE_BLOCKS.get(self.name)
        if blocks is None:  # any other encoder is frozen whole
            check_int("encoder.trained_blocks", self.trained_blocks, 0)
            only = "only EfficientNet-Lite's last blocks can be trained"
            check(
                "encoder.trained_blocks",
                self.trained_blocks,
                self.trained_blocks == 0,
                f"0 with the {self.name} encoder ({only})",
            )
        else:  # at least the first block stays frozen: the cached grids come out of it
            why = f"{self.name} has {blocks} blocks"
            check_int("encoder.trained_blocks", self.trained_blocks, 0, blocks - 1, why)
        return self


# MBConv blocks of each EfficientNet-Lite, as efficientnet_lite_pytorch builds them (the
# encoder checks its network against this, without which configs are checked before any build).
EFFICIENTNET_LITE_BLOCKS = {"efficientnet-lite0": 16, "efficientnet-lite2": 21}


@dataclass
class DecoderConfig:
    """Shape of the transformer decoder. `vocab_size`, `image_dim` and `image_tokens` are filled
    in at build time, from the tokenizer and the encoder."""

    vocab_size: int = 49408
    # The width of the encoder's grids the decoder reads (the encoder's `dim`): with trained
    # encoder blocks (`EncoderConfig.trained_blocks`), their input; the projection then takes
    # what the decoder's copy of those blocks puts out.
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
    # What the decoder reads for each caption token: "learned" (its own embedding, also the
    # output layer), "clip" (CLIP's frozen text-tower token-embedding table) or
    # "clip-contextual" (the frozen causal text tower's per-token hidden states); the CLIP ones
    # go through a learned projection to d_model, with a learned output layer.
    token_embedding: str = "learned"
    # Hub id or folder of the CLIP model those come from (None: the CLIP encoder's source when
    # the encoder is CLIP, else openai/clip-vit-base-patch32). Needed whenever the model is built.
    token_embedding_source: str | None = None
    # The CLIP id of each model id under a compact vocabulary (-1: the "unknown" token), so the
    # CLIP token input reads the right rows; set when the model is built from its tokenizer
    # (None: the model's ids are CLIP's own). Kept here, not among the weights, so that no dtype
    # conversion of the weights can touch it.
    clip_ids: list[int] | None = None

    def __post_init__(self) -> None:
        if self.token_embedding not in TOKEN_EMBEDDINGS:
            raise ValueError(
                f"decoder.token_embedding must be one of {', '.join(TOKEN_EMBEDDINGS)}, "
                f"got {self.token_embedding!r}"
            )
        source = self.token_embedding_source
        if source is not None and (not isinstance(source, str) or not source.strip()):
            raise ValueError(
                f"decoder.token_embedding_source must be a hub id or folder, got {source!r}"
            )
        ids = self.clip_ids
        if ids is not None and (
            not isinstance(ids, list)
            or not all(isinstance(i, int) and not isinstance(i, bool) and i >= -1 for i in ids)
        ):
            raise ValueError("decoder.clip_ids must be a list of CLIP ids (-1: unknown) or none")


TOKEN_EMBEDDINGS = ("learned", "clip", "clip-contextual")


# The widest beam and the most captions per image a caller may ask for: each beam or sample is a
# row of every decoder call, so these bound the work one request can cause.
MAX_NUM_BEAMS = 16
MAX_RETURN_SEQUENCES = 16
# Near 0 the scaled logits overflow float32 (NaN scores; 0.01 already samples almost greedily);
# above 100 sampling is uniform noise.
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.01, 100.0
# A beam's score is divided by length ** length_penalty: beyond +-10 the longest caption's
# factor (max_length ** 10 is about 1e16 at 40 tokens) ranks by length alone, and far beyond
# it the power overflows.
MAX_LENGTH_PENALTY = 10.0


@dataclass
class GenerationConfig:
    """Decoding settings; the defaults are what `caption()` uses when nothing is passed.

    Each option has the name Hugging Face's `generate()` gives it, where it has one, so code and
    habits written for it carry over. Greedy when num_beams == 1, beam search when larger;
    `do_sample` draws from the `top_p` nucleus at `temperature` instead (num_beams is then
    unused). `num_return_sequences` captions per image: the best K beams, or K independent
    samples (which may coincide).
    """

    num_beams: int = 3
    max_new_tokens: int = 30
    # The end token is banned until the caption has this many tokens (1: never empty).
    min_new_tokens: int = 1
    num_return_sequences: int = 1
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 3
    do_sample: bool = False
    top_p: float = 0.9
    temperature: float = 1.0
    seed: int | None = None

    def replace(self, **options: Any) -> GenerationConfig:
        """A copy with `options` changed; an unknown option name is a ValueError naming it."""
        known = [f.name for f in dataclasses.fields(self)]
        for name in options:
            if name in RENAMED_OPTIONS:
                raise ValueError(f"generation option {name} is called {RENAMED_OPTIONS[name]} now")
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ValueError(
                f"unknown generation option(s) {', '.join(unknown)}; known: {', '.join(known)}"
            )
        return dataclasses.replace(self, **options)

    def validate(self, max_new_tokens_limit: int | None = None) -> GenerationConfig:
        """Raise ValueError, saying the allowed range, for any setting that would decode
        nonsense or silently do something else; returns self. `max_new_tokens_limit`: the most
        tokens the model can write (its max_length - 1), when known."""
        check_int("num_beams", self.num_beams, 1, MAX_NUM_BEAMS)
        check_int(
            "max_new_tokens",
            self.max_new_tokens,
            1,
            max_new_tokens_limit,
            "the longest this model writes",
        )
        check_int("min_new_tokens", self.min_new_tokens, 1, self.max_new_tokens, "max_new_tokens")
        if not isinstance(self.do_sample, bool):
            raise ValueError(f"do_sample must be true or false, got {self.do_sample!r}")
        if self.do_sample:
            check_int("num_return_sequences", self.num_return_sequences, 1, MAX_RETURN_SEQUENCES)
        else:
            why = "num_beams: the best beams; or do_sample=True for samples"
            check_int("num_return_sequences", self.num_return_sequences, 1, self.num_beams, why)
        check_int("no_repeat_ngram_size", self.no_repeat_ngram_size, 0, None)
        check_number("length_penalty", self.length_penalty, -MAX_LENGTH_PENALTY, MAX_LENGTH_PENALTY)
        check_number("top_p", self.top_p, 0.0, 1.0, low_open=True)
        check_number("temperature", self.temperature, MIN_TEMPERATURE, MAX_TEMPERATURE)
        if self.seed is not None:
            check_int("seed", self.seed, 0, 2**64 - 1)
        return self


def check(name: str, value: Any, ok: bool, allowed: str) -> None:
    """A ValueError in the one wording every refused setting has, unless `ok`: the setting, what
    it may be and what it was, so a typo is fixed from the message alone."""
    if not ok:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


def check_int(
    name: str,
    value: Any,
    low: int,
    high: int | None = None,
    why: str = "",
    *,
    optional: bool = False,
) -> None:
    """An integer (not a bool) from `low` to `high` (None: no upper bound), or None if
    `optional`; `why` says where `high` comes from."""
    if optional and value is None:
        return
    allowed = f"an integer from {low} to {high}" if high is not None else f"an integer >= {low}"
    if why and high is not None:
        allowed += f" ({why})"
    if optional:
        allowed += " or none"
    whole = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    shown = int(value) if whole else value
    check(name, shown, whole and low <= shown and (high is None or shown <= high), allowed)


def check_number(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    optional: bool = False,
) -> None:
    """A finite real number (not a bool) within `low` and `high` where they are given, each
    bound included unless its `_open` flag says otherwise, or None if `optional`."""
    if optional and value is None:
        return
    bounds = []
    if low is not None:
        bounds.append(f"{'>' if low_open else '>='} {low}")
    if high is not None:
        bounds.append(f"{'<' if high_open else '<='} {high}")
    allowed = "a number " + " and ".join(bounds) if bounds else "a finite number"
    if optional:
        allowed += " or none"
    real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not (real and math.isfinite(value)):
        check(name, value, False, allowed)
    shown = value if isinstance(value, (int, float)) else float(value)
    above = low is None or (shown > low if low_open else shown >= low)
    below = high is None or (shown < high if high_open else shown <= high)
    check(name, shown, above and below, allowed)


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
        return config_from_dict(cls, data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> CaptionerConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))


# Generation options by the names they had before they took Hugging Face's: a config saved with
# one still loads, and a caller who passes one is told the new name.
RENAMED_OPTIONS = {"beam_size": "num_beams"}


def check_option_names(function: str, options: Iterable[str]) -> None:
    """A TypeError, worded like Python's own for a wrong keyword, for an option passed by its
    old name: the caller learns the new one instead of a list of every option."""
    for name in options:
        if name in RENAMED_OPTIONS:
            raise TypeError(f"{function}() got {name!r}: it is called {RENAMED_OPTIONS[name]} now")


def current_option_names(values: dict[str, Any]) -> dict[str, Any]:
    """A saved generation config's values with old option names read as the new ones."""
    current = {RENAMED_OPTIONS.get(name, name): value for name, value in values.items()}
    if len(current) < len(values):
        both = [f"{old} and {new}" for old, new in RENAMED_OPTIONS.items() if old in values]
        raise ValueError(f"a generation config sets both {', '.join(both)} (the same option)")
    return current


ConfigT = TypeVar("ConfigT", bound="DataclassInstance")


def config_from_dict(kind: type[ConfigT], values: Any) -> ConfigT:
    """`kind(**values)`, each field that is itself a config dataclass built from its own dict
    the same way. Unknown keys are refused so that typos in configs surface early."""
    if not isinstance(values, dict):
        raise ValueError(f"{kind.__name__} settings must be a mapping, got {values!r}")
    if kind is GenerationConfig:
        values = current_option_names(values)
    unknown = set(values) - {f.name for f in dataclasses.fields(kind)}
    if unknown:
        raise ValueError(f"unknown {kind.__name__} fields: {sorted(unknown)}")
    hints = typing.get_type_hints(kind)
    return kind(
        **{
            key: config_from_dict(hints[key], value) if _is_config(hints[key]) else value
            for key, value in values.items()
        }
    )


def _is_config(annotation: Any) -> bool:
    return isinstance(annotation, type) and dataclasses.is_dataclass(annotation)


# ---- typed KEY=VALUE settings (`captioner train --set`) -------------------------------------

_TRUE, _FALSE, _NONE = {"true", "yes", "1"}, {"false", "no", "0"}, {"none", "null"}
_INTEGER = re.compile(r"\s*[+-]?\d+\s*")
_TYPE_NAMES = {
    bool: "true or false (yes/no, 1/0)",
    int: "an integer",
    float: "a number",
    str: "text",
    type(None): "none",
}


def setting_keys(kind: type, prefix: str = "") -> dict[str, Any]:
    """Every field of a config dataclass by dotted key (`decoder.n_layers` for a nested
    dataclass's field), with its type."""
    keys: dict[str, Any] = {}
    for name, annotation in typing.get_type_hints(kind).items():
        if _is_config(annotation):
            keys.update(setting_keys(annotation, f"{prefix}{name}."))
        else:
            keys[prefix + name] = annotation
    return keys


def parse_settings(kind: type, assignments: Iterable[str]) -> dict[str, Any]:
    """`KEY=VALUE` strings as the nested dict of typed values that config dataclass `kind`
    takes. An unknown key (with the close matches), or a value that is not of its field's type,
    is a ValueError naming them."""
    keys = setting_keys(kind)
    settings: dict[str, Any] = {}
    for assignment in assignments:
        key, equals, text = assignment.partition("=")
        key = key.strip()
        if not equals or not key:
            raise ValueError(f"{assignment!r} is not KEY=VALUE")
        if key not in keys:
            fields = [k.removeprefix(f"{key}.") for k in keys if k.startswith(f"{key}.")]
            if fields:
                raise ValueError(
                    f"{key} is a group of settings: set them as {key}.NAME=VALUE, NAME one of "
                    + ", ".join(fields)
                )
            close = difflib.get_close_matches(key, keys, n=3, cutoff=0.7)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise ValueError(f"unknown setting {key!r}{hint}")
        *groups, name = key.split(".")
        target = settings
        for group in groups:
            target = target.setdefault(group, {})
        target[name] = parse_value(key, text, keys[key])
    return settings


def parse_value(key: str, text: str, annotation: Any) -> Any:
    """`text` as a value of type `annotation`: bool (true/false, yes/no, 1/0, any case), int,
    float (finite), str, or a union of them, None ("none" or "null") included."""
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    options = typing.get_args(annotation) if union else (annotation,)
    word = text.strip().lower()
    if type(None) in options and word in _NONE:
        return None
    for option in options:
        if option is bool and word in _TRUE | _FALSE:
            return word in _TRUE
        if option is int and _INTEGER.fullmatch(text):
            return int(text)
        if option is float:
            try:
                number = float(text)
            except ValueError:
                continue
            if math.isfinite(number):
                return number
        if option is str:
            return text
    if not all(option in _TYPE_NAMES for option in options):
        raise ValueError(f"{key} cannot be set as KEY=VALUE")
    expected = " or ".join(_TYPE_NAMES[option] for option in options)
    raise ValueError(f"{key} must be {expected}, got {text!r}")
