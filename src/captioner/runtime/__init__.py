"""What runs the model: one interface (`base`), ONNX Runtime over exported graphs (`onnx`, no
torch) and PyTorch (`torch`, for training and for models that have no graphs yet)."""

from captioner.runtime.base import (
    DEFAULT_RUNTIME,
    RUNTIMES,
    Decoding,
    Runtime,
    check_runtime,
    decoder_variant,
)

__all__ = ["DEFAULT_RUNTIME", "RUNTIMES", "Decoding", "Runtime", "check_runtime", "decoder_variant"]
