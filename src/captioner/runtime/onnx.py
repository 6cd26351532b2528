"""ONNX Runtime over an exported model folder (`captioner.json` and its graphs; see
`captioner.onnx`), with numpy only: what `pip install captioner` captions and serves with."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from captioner.hub import DESCRIPTION_FILE
from captioner.transforms import Preprocess

if TYPE_CHECKING:
    import onnxruntime

FORMAT = "captioner-onnx"
FORMAT_VERSION = 2
# The decoder graphs an export may hold: float32, and int8 weights (the encoder is float32).
VARIANTS = ("fp32", "int8")
# The threads of a decoding step (`step_session`), per variant: up to this many rows it runs on
# one thread, above on all, because waking a second thread costs more than it saves on little
# work; the float32 graphs read four times the weights, so more threads pay from the first row.
# bench/decoder_step.py times a step on one and on two threads to choose them.
ONE_THREAD_ROWS = {"int8": 32, "fp32": 0}
# Images per encoder call: past 2, activations spill out of the core's cache and each image
# costs more (bench/encoder_paths.py --batches 1 2 8).
ENCODER_CHUNK = 2


class ExportedModelError(ValueError):
    """A folder's `captioner.json` or graphs cannot be used; the message says why."""


def available_threads() -> int:
    """The cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def cpu_session(model: bytes | str | Path, threads: int) -> onnxruntime.InferenceSession:
    """An ONNX Runtime CPU session whose idle threads sleep: spinning ones would slow the Python
    work between calls (and the loader processes) on a small machine."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    model = str(model) if isinstance(model, Path) else model
    return onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def kv_names(kind: str, n_layers: int) -> list[str]:
    """`{kind}_key_0, {kind}_value_0, {kind}_key_1, ...`: one tensor per layer and role, each
    (batch, H, length, E), so no graph ever slices a packed cache (ONNX Runtime would copy it)."""
    return [f"{kind}_{role}_{layer}" for layer in range(n_layers) for role in ("key", "value")]


def read_description(directory: Path) -> dict[str, Any]:
    """`captioner.json`, checked for the format this runtime reads."""
    path = directory / DESCRIPTION_FILE
    try:
        description = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ExportedModelError(f"{path}: not a readable captioner.json ({error})") from None
    if not isinstance(description, dict) or description.get("format") != FORMAT:
        raise ExportedModelError(f"{path}: not a captioner ONNX export")
    if description.get("version") != FORMAT_VERSION:
        raise ExportedModelError(
            f"{path}: ONNX format version {description.get('version')!r}; this captioner reads "
            f"version {FORMAT_VERSION}: export the model again with this version"
        )
    return description


def preprocess_of(description: dict[str, Any]) -> Preprocess:
    spec = description["preprocess"]
    return Preprocess(
        crop_size=spec["crop_size"],
        resize_size=spec["resize_size"],
        mean=tuple(spec["mean"]),
        std=tuple(spec["std"]),
        resample=spec["resample"],
    )


class OnnxRuntime:
    """The encoder and one decoder variant of an exported folder, in ONNX Runtime on CPU.
    `encoder` replaces the folder's encoder graph (a CLIP encoder running in PyTorch)."""

    def __init__(
        self,
        directory: str | Path,
        variant: str = "int8",
        threads: int | None = None,
        encoder: Callable[[np.ndarray], np.ndarray] | None = None,
    ):
        directory = Path(directory)
        description = read_description(directory)
        files = description["variants"].get(variant)
        if files is None:
            have = ", ".join(description["variants"]) or "none"
            raise ExportedModelError(f"{directory}: no {variant} graphs (it has: {have})")
        self.name = f"onnx-{variant}"
        self.variant = variant
        self.directory = directory
        self.preprocess = preprocess_of(description)
        spec = description["encoder"]
        self.grid = (spec["grid_h"], spec["grid_w"])
        decoder = description["decoder"]
        self.max_length = decoder["max_length"]
        self.image_tokens = decoder["image_tokens"]
        self.parameters = decoder.get("parameters")  # written since GRAPHS_REVISION 4
        self.threads = threads or available_threads()
        self._encoder_file = directory / files["encoder"]
        self._encode = encoder
        self._encoder: onnxruntime.InferenceSession | None = None
        self._image = cpu_session(directory / files["image"], self.threads)
        self._step_file = directory / files["step"]
        self._steps: dict[int, onnxruntime.InferenceSession] = {}  # by threads, opened on need
        # The decoder's self-attention cache, then (clip-contextual token input) the CLIP text
        # tower's, each fed back as the step returns it: (heads, head width) of each tensor.
        text_layers = decoder.get("text_layers", 0)
        self.past_names = kv_names("past", decoder["n_layers"]) + kv_names("text_past", text_layers)
        self.past_shapes = [(decoder["n_heads"], decoder["head_dim"])] * (2 * decoder["n_layers"])
        self.past_shapes += [(decoder.get("text_heads"), decoder.get("text_head_dim"))] * (
            2 * text_layers
        )
        self.cross_names = kv_names("cross", decoder["n_layers"])

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        if self._encode is not None:
            return self._encode(pixels)
        if self._encoder is None:
            self._encoder = cpu_session(self._encoder_file, self.threads)
        pixels = np.ascontiguousarray(pixels, dtype=np.float32)
        grids = [
            self._encoder.run(None, {"pixels": pixels[i : i + ENCODER_CHUNK]})[0]
            for i in range(0, len(pixels), ENCODER_CHUNK)
        ]
        return np.concatenate(grids)

    def start(
        self, features: np.ndarray, rows_per_image: int, attention: bool = True
    ) -> OnnxDecoding:
        """The step graph computes the cross-attention either way: `attention` changes nothing."""
        features = np.ascontiguousarray(features, dtype=np.float32)
        if features.ndim != 3 or features.shape[1] != self.image_tokens:
            raise ValueError(
                f"the decoder reads {self.image_tokens} image tokens a row; got features of "
                f"shape {tuple(features.shape)}"
            )
        cross = self._image.run(None, {"features": features})
        return OnnxDecoding(self, cross, rows_per_image)

    def step_session(self, rows: int) -> onnxruntime.InferenceSession:
        threads = 1 if rows <= ONE_THREAD_ROWS[self.variant] else self.threads
        if threads not in self._steps:
            self._steps[threads] = cpu_session(self._step_file, threads)
        return self._steps[threads]


class OnnxDecoding:
    """The step graph's inputs between calls: the image's cross-attention keys and values (a
    row per image) and the self-attention keys and values so far (a row per row)."""

    def __init__(self, runtime: OnnxRuntime, cross: list[np.ndarray], rows_per_image: int):
        self.runtime = runtime
        self.cross = cross
        rows = cross[0].shape[0] * rows_per_image
        self.past = [
            np.zeros((rows, heads, 0, width), np.float32) for heads, width in runtime.past_shapes
        ]
        self.length = 0

    def step(self, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.length >= self.runtime.max_length:
            raise ValueError(f"the decoder has {self.runtime.max_length} positions; all are used")
        ids = np.asarray(tokens, dtype=np.int64).reshape(-1, 1)
        inputs = {"ids": ids, **dict(zip(self.runtime.cross_names, self.cross))}
        inputs.update(zip(self.runtime.past_names, self.past))
        logits, *self.past, attention = self.runtime.step_session(len(ids)).run(None, inputs)
        self.length += 1
        return logits, attention

    def keep(self, rows: np.ndarray, images: np.ndarray | None = None) -> None:
        self.past = [tensor[rows] for tensor in self.past]
        if images is not None:
            self.cross = [np.ascontiguousarray(tensor[images]) for tensor in self.cross]
