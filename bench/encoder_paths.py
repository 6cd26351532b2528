"""Which way of running the EfficientNet-Lite2 encoder on CPU is fastest (ms per batch).

The encoder is most of a caption's cost on CPU, so each candidate is measured against the network
as published (batch norms unfolded): batch-norm folding, channels_last, TorchScript trace +
freeze, and ONNX Runtime. The library folds at load and runs ONNX Runtime on CPU, `ENCODER_CHUNK`
images per call: the exported `encoder.onnx` in `Captioner`'s ONNX runtimes
(`captioner.runtime.onnx`), the same graph exported in memory in `EfficientNetLiteEncoder`
(`runtime="auto"`, for the feature cache and training).
"""

from __future__ import annotations

import argparse

import torch
from _common import header, measure, median
from torch import nn

from captioner.encoders.efficientnet import EfficientNetLiteEncoder, FeatureMap, onnx_session
from captioner.runtime.onnx import ENCODER_CHUNK


def lite2(fold_norms: bool = True) -> FeatureMap:
    """A fresh network each time: channels_last converts its module in place."""
    encoder = EfficientNetLiteEncoder("efficientnet-lite2", fold_norms=fold_norms)
    return FeatureMap(encoder.net).eval()


def candidates(size: int) -> dict[str, object]:
    folded = lite2()
    example = torch.randn(1, 3, size, size)
    with torch.inference_mode(False), torch.no_grad():
        traced = torch.jit.optimize_for_inference(
            torch.jit.freeze(torch.jit.trace(folded, example))
        )
    runs = {
        "published (BN unfolded)": lite2(fold_norms=False),
        "BN folded (PyTorch)": folded,
        "BN folded + channels_last": _ChannelsLast(lite2()),
        "BN folded + jit trace/freeze": traced,
    }
    session = onnx_session(folded.net, size, torch.get_num_threads())
    runs["BN folded + ONNX Runtime, whole batch"] = lambda x: session.run(
        None, {"pixels": x.numpy()}
    )[0]
    library = EfficientNetLiteEncoder("efficientnet-lite2", runtime="onnx")
    runs[f"BN folded + ONNX Runtime, {ENCODER_CHUNK} per call (library)"] = library.features
    return runs


class _ChannelsLast:
    def __init__(self, module: nn.Module):
        self.module = module.to(memory_format=torch.channels_last)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.module(pixels.contiguous(memory_format=torch.channels_last))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 8])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    header("EfficientNet-Lite2 encoder paths, CPU")
    size = 260
    runs = candidates(size)
    reference = lite2(fold_norms=False)
    for batch in args.batches:
        pixels = torch.randn(batch, 3, size, size)
        with torch.inference_mode():
            expected = reference(pixels)
            baseline = None
            print(f"batch {batch}:")
            for name, run in runs.items():
                got = torch.as_tensor(run(pixels))
                error = (got - expected).abs().max().item()
                repeats = max(3, args.repeats // batch)
                ms = median(measure(lambda run=run, pixels=pixels: run(pixels), repeats)) * 1000
                baseline = baseline or ms
                print(
                    f"  {name:50s} {ms:8.1f} ms  {batch / ms * 1000:6.1f} img/s  "
                    f"x{baseline / ms:4.2f}  max|diff| {error:.1e}"
                )


if __name__ == "__main__":
    main()
