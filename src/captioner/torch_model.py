"""`CaptionModel`: the PyTorch model (frozen encoder + decoder + tokenizer) that training trains,
with Hugging Face-style save/load. Inference goes through `captioner()`, a `Captioner` over this
model in PyTorch or over its exported graphs in ONNX Runtime."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from captioner.config import CaptionerConfig, GenerationConfig
from captioner.decoder import CaptionDecoder
from captioner.encoders import ImageEncoder, build_encoder
from captioner.hub import (
    BUNDLED_MODELS,
    CONFIG_FILE,
    TOKENIZER_FILE,
    WEIGHTS_FILE,
    ModelLoadError,
    load_config,
    load_tokenizer,
)
from captioner.model import Caption, Captioner, special_tokens
from captioner.model_card import write_model_card
from captioner.runtime.base import DEFAULT_RUNTIME, check_runtime, decoder_variant
from captioner.runtime.torch import TorchRuntime
from captioner.tokenizer import CaptionTokenizer


class CaptionModel(nn.Module):
    def __init__(
        self,
        config: CaptionerConfig,
        tokenizer: CaptionTokenizer | None = None,
        encoder: ImageEncoder | None = None,
        encoder_runtime: str = DEFAULT_RUNTIME,
    ):
        """`encoder_runtime` (see `captioner.runtime.base`): "torch" keeps the encoder in
        PyTorch too; otherwise an EfficientNet encoder runs in ONNX Runtime on CPU. With
        `config.encoder.trained_blocks`, the decoder holds the encoder's trained top."""
        super().__init__()
        self.tokenizer = tokenizer or CaptionTokenizer()
        self.encoder = encoder or build_encoder(config.encoder, encoder_runtime)
        trained = config.encoder.trained_blocks
        if self.encoder.trained_blocks != trained:  # an encoder given for another config
            raise ValueError(
                f"the encoder has trained_blocks={self.encoder.trained_blocks}, "
                f"the model's config {trained}"
            )
        # The decoder's input sizes follow from the encoder and tokenizer: one source of truth.
        config.decoder = dataclasses.replace(
            config.decoder,
            vocab_size=self.tokenizer.vocab_size,
            image_dim=self.encoder.dim,
            image_tokens=self.encoder.grid_h * self.encoder.grid_w,
        )
        self.config = config
        # The trained top starts from the encoder's pretrained weights; a saved model's own
        # replace them when its state dict is loaded.
        top = self.encoder.trainable_top() if trained else None
        self.decoder = CaptionDecoder(config.decoder, image_stage=top)
        self.special = special_tokens(self.tokenizer)
        # (weights version, variant) -> the Captioner over this model's exported graphs
        self._exported: dict[tuple, Captioner] = {}

    def forward(
        self, features: torch.Tensor, ids: torch.Tensor, image_index: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Teacher-forced logits: `features` from the encoder, `ids` (captions, length) with the
        start token first; caption i belongs to image image_index[i] (default: image i).
        Position t predicts ids[:, t + 1]."""
        memory = self.decoder.encode_image(features)
        return self.decoder(ids, memory, image_index=image_index).logits

    @property
    def device(self) -> torch.device:
        return next(self.decoder.parameters()).device

    # ---- inference ------------------------------------------------------------------------
    def captioner(self, runtime: str = "torch") -> Captioner:
        """This model ready to caption: in PyTorch ("torch"), or in ONNX Runtime over its
        graphs ("auto", "onnx", "onnx-fp32"), exported once per weights into the cache
        (`captioner.onnx.cache`)."""
        if check_runtime(runtime) == "torch":
            return Captioner(self.config, self.tokenizer, TorchRuntime(self))
        from captioner.onnx.cache import cached_runtime

        key = (weights_version(self.decoder), decoder_variant(runtime))
        if key not in self._exported:
            self._exported = {  # one export at a time: older weights' sessions are let go
                key: Captioner(self.config, self.tokenizer, cached_runtime(self, key[1]))
            }
        return self._exported[key]

    def generate_from_features(
        self,
        features: torch.Tensor | np.ndarray,
        generation: GenerationConfig | None = None,
        return_attention: bool = False,
    ) -> list[Caption]:
        """`Captioner.generate_from_features` in PyTorch, on this model's device."""
        features = cast(np.ndarray, features)  # TorchRuntime takes tensors as they are
        return self.captioner().generate_from_features(features, generation, return_attention)

    def caption(self, *args: Any, runtime: str = "torch", **options: Any) -> list[Caption]:
        """`Captioner.caption` (the same arguments) with this model, in PyTorch unless `runtime`
        says otherwise."""
        return self.captioner(runtime).caption(*args, **options)

    # ---- persistence ----------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, dtype: torch.dtype | None = None) -> Path:
        """config.json + model.safetensors (decoder only, with any trained encoder blocks: the
        frozen encoder is referenced by name) + tokenizer.json + a model card.
        `dtype=torch.float16` halves the size on disk."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.config.save(directory / CONFIG_FILE)
        state = {  # `dtype` applies to the weights, never to integer tensors (ids, counts)
            name: (tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor)
            .detach()
            .contiguous()
            .cpu()
            for name, tensor in self.decoder.state_dict().items()
        }
        save_file(state, directory / WEIGHTS_FILE, metadata={"format": "pt"})
        self.tokenizer.save(directory / TOKENIZER_FILE)
        write_model_card(directory, self.config)  # README.md with the hub's metadata block
        return directory

    @classmethod
    def from_pretrained(
        cls,
        source: str | Path | None = None,
        encoder: ImageEncoder | None = None,
        encoder_runtime: str = DEFAULT_RUNTIME,
    ) -> CaptionModel:
        """As `Captioner.from_pretrained` takes it (a name, folder, hub id or wandb: artifact),
        with its PyTorch weights. ModelLoadError (one line) for a folder it cannot read."""
        from captioner.hub import resolve_model_dir

        directory = resolve_model_dir(source)
        model = cls(load_config(directory), load_tokenizer(directory), encoder, encoder_runtime)
        path = directory / WEIGHTS_FILE
        if directory in BUNDLED_MODELS.values() and not path.is_file():
            raise ModelLoadError(
                f"the bundled model's PyTorch weights are not in this installation (the wheel "
                f"ships its ONNX graphs only, {directory}): use a checkout of the repository "
                "for them, or pass another model folder"
            )
        try:
            state = load_file(path)
            model.decoder.load_state_dict({k: v.float() for k, v in state.items()})
        except (OSError, SafetensorError, RuntimeError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error)
            raise ModelLoadError(
                f"{path}: not readable weights for this config ({first})"
            ) from None
        return model.eval()


def weights_version(decoder: CaptionDecoder) -> tuple[tuple[int, int], ...]:
    """Changes whenever a weight is replaced or changed in place (an optimiser step, loading a
    state dict): cheap enough to check before every batch. Weights made under
    `torch.inference_mode()` keep no version, and nothing can train them."""
    return tuple(
        (p.data_ptr(), 0 if p.is_inference() else p._version) for p in decoder.parameters()
    )
