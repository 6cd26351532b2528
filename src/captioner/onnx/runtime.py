"""Which runtime runs a model on CPU, and the exported decoder behind `CaptionDecoder`'s interface.

`runtime` (of `Captioner` and the EfficientNet encoders):
- "auto" (the default): ONNX Runtime on CPU when onnxruntime is installed: the encoder in
  float32, the decoder's int8 graphs, for a model whose decoder weights are those
  `from_pretrained` loaded (a model being trained, or built in memory, decodes in PyTorch);
  PyTorch otherwise.
- "onnx": the same, required (an error without onnxruntime), for any weights.
- "onnx-fp32": as "onnx" with the decoder's float32 graphs (the same captions as PyTorch).
- "torch": PyTorch only.

The decoder's graphs are exported at first use into a cache folder keyed by a hash of the
weights (`cache_root()`), so the package ships no ONNX files and the bundled model stays offline.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from captioner.config import DecoderConfig
from captioner.decoder import (
    CaptionDecoder,
    DecoderOutput,
    check_image_tokens,
    check_length,
    check_rows,
)
from captioner.onnx.export import (
    FILES,
    FORMAT_VERSION,
    GRAPHS_REVISION,
    export_decoder,
    kv_names,
    kv_shape,
    replace_directory,
)

if TYPE_CHECKING:
    import onnxruntime

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "onnx", "onnx-fp32", "torch")
DEFAULT_RUNTIME = "auto"
# Per variant: up to this many rows a decoding step runs faster on one thread than on more
# (`bench/decoder_step.py`, 2 cores: int8 0.85 against 1.03 ms at 1 row, 2.4 against 2.6 ms at
# 16, 9.2 against 6.8 ms at 48; waking a second thread costs more than it saves on so little
# work). The float32 graphs read four times the weights: two threads win from one row.
ONE_THREAD_ROWS = {"int8": 32, "fp32": 0}


def check_runtime(runtime: str) -> str:
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    return runtime


def decoder_variant(runtime: str) -> str:
    """The exported variant a runtime decodes with."""
    return "fp32" if runtime == "onnx-fp32" else "int8"


def cpu_session(model: bytes | str | Path, threads: int) -> onnxruntime.InferenceSession:
    """An ONNX Runtime CPU session whose idle threads sleep: spinning ones would slow the
    PyTorch and Python work between calls on a small machine."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    model = str(model) if isinstance(model, Path) else model
    return onnxruntime.InferenceSession(model, options, ["CPUExecutionProvider"])


class OnnxCache:
    """What the step graph reads besides the new token: the self-attention keys and values so
    far, and the image's cross-attention keys and values split per layer once (from the
    `image` tensor they were split from, kept to notice a new one), both in `kv_names` order."""

    def __init__(self) -> None:
        self.past: list[np.ndarray] | None = None
        self.cross: list[np.ndarray] = []
        self.cross_source: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return 0 if self.past is None else self.past[0].shape[2]

    def reorder(self, rows: torch.Tensor, image_rows: torch.Tensor | None = None) -> None:
        """Keep the self-attention rows `rows` (beam search). The image's rows follow the
        `image` of the next call; `image_rows` is accepted for KVCache's interface."""
        if self.past is not None:
            kept = rows.cpu().numpy()
            self.past = [tensor[kept] for tensor in self.past]

    def image_inputs(self, image: torch.Tensor) -> list[np.ndarray]:
        """`image` (batch, L, 2, H, T, E) as per-layer contiguous arrays, split again only when
        the image rows change (a new batch, or rows dropped)."""
        if image is not self.cross_source:
            packed = image.numpy()
            layers = packed.shape[1]
            self.cross = [
                np.ascontiguousarray(packed[:, layer, role])
                for layer in range(layers)
                for role in range(2)
            ]
            self.cross_source = image
        return self.cross


class OnnxDecoder:
    """The exported decoder with `CaptionDecoder`'s inference interface (`config`,
    `encode_image`, `new_cache`, calls with a cache), so `generation` drives either. Its
    "memory" is the image's cross-attention keys and values, (batch, L, 2, H, T, E)."""

    def __init__(self, config: DecoderConfig, directory: Path, variant: str, threads: int):
        self.config = config
        self.variant = variant
        self._image = cpu_session(directory / FILES[variant]["image"], threads)
        self._step_file = directory / FILES[variant]["step"]
        self._threads = threads
        self._steps: dict[int, onnxruntime.InferenceSession] = {}  # by threads, opened on need
        self._past_names = kv_names("past", config.n_layers)
        self._cross_names = kv_names("cross", config.n_layers)

    def new_cache(self) -> OnnxCache:
        return OnnxCache()

    def encode_image(self, features: torch.Tensor) -> torch.Tensor:
        check_image_tokens(self.config, features)
        outputs = self._image.run(None, {"features": features.float().contiguous().numpy()})
        layers = [np.stack(outputs[i : i + 2], 1) for i in range(0, len(outputs), 2)]
        return torch.from_numpy(np.stack(layers, 1))

    def __call__(
        self,
        ids: torch.Tensor,
        image: torch.Tensor,
        cache: OnnxCache | None = None,
        need_weights: bool = False,
    ) -> DecoderOutput:
        """As `CaptionDecoder.forward`: `ids` (batch, length) follow what `cache` holds; a
        longer `ids` runs one step per position (the teacher-forced pass for attention maps)."""
        cache = cache if cache is not None else self.new_cache()
        check_length(self.config, cache.length, ids.shape[1])
        check_rows(ids.shape[0], image.shape[0])
        if cache.past is None:
            empty = np.zeros(kv_shape(self.config, ids.shape[0], 0), np.float32)
            cache.past = [empty] * len(self._past_names)
        cross = dict(zip(self._cross_names, cache.image_inputs(image.contiguous())))
        tokens = ids.cpu().numpy()
        step = self._step_session(tokens.shape[0])
        logits, weights = [], []
        for position in range(tokens.shape[1]):
            inputs = {"ids": tokens[:, position : position + 1], **cross}
            inputs.update(zip(self._past_names, cache.past))
            step_logits, *cache.past, attention = step.run(None, inputs)
            logits.append(step_logits)
            weights.append(attention)
        cross_attention = torch.from_numpy(np.stack(weights, 3)) if need_weights else None
        # (batch, length, V); one step (generation) needs no copy
        logits = logits[0][:, None] if len(logits) == 1 else np.stack(logits, 1)
        return DecoderOutput(torch.from_numpy(logits), cross_attention)

    def _step_session(self, rows: int) -> onnxruntime.InferenceSession:
        threads = 1 if rows <= ONE_THREAD_ROWS[self.variant] else self._threads
        if threads not in self._steps:
            self._steps[threads] = cpu_session(self._step_file, threads)
        return self._steps[threads]


def cache_root() -> Path:
    """$CAPTIONER_CACHE_DIR, else $XDG_CACHE_HOME/captioner, else ~/.cache/captioner."""
    if os.environ.get("CAPTIONER_CACHE_DIR"):
        return Path(os.environ["CAPTIONER_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "captioner"


def weights_key(decoder: CaptionDecoder) -> str:
    """Names the decoder's shape and weights exactly, and the export format and tools."""
    import onnxruntime

    digest = hashlib.sha256()
    facts = [vars(decoder.config), FORMAT_VERSION, GRAPHS_REVISION]
    facts += [torch.__version__, onnxruntime.__version__]
    digest.update(json.dumps(facts, sort_keys=True).encode())
    for name, tensor in decoder.state_dict().items():
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:24]


def exported_decoder(decoder: CaptionDecoder, variant: str) -> OnnxDecoder:
    """The decoder's `variant` graphs in ONNX Runtime, exported into the cache on first use."""
    root = cache_root() / "onnx"
    directory = root / f"{weights_key(decoder)}-{variant}"
    if not (directory / FILES[variant]["step"]).is_file():
        log.info("exporting the decoder to ONNX (%s), once for these weights: %s", variant, root)
        root.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix="export-", dir=root))
        export_decoder(decoder, scratch, [variant])
        replace_directory(scratch, directory)
    return OnnxDecoder(decoder.config, directory, variant, torch.get_num_threads())


def weights_version(decoder: CaptionDecoder) -> tuple[tuple[int, int], ...]:
    """Changes whenever a weight is replaced or changed in place (an optimiser step, loading a
    state dict): cheap enough to check before every batch. Weights made under
    `torch.inference_mode()` keep no version, and nothing can train them."""
    return tuple(
        (p.data_ptr(), 0 if p.is_inference() else p._version) for p in decoder.parameters()
    )
