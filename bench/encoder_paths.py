"""Which way of running the EfficientNet-Lite2 encoder on CPU is fastest (ms per batch).

The encoder is most of a caption's cost on CPU, so each candidate is measured against the network
as published (batch norms unfolded): batch-norm folding (what the library does at load),
channels_last, TorchScript trace + freeze, and ONNX Runtime when installed (`.[onnx]`).
"""

from __future__ import annotations

import argparse
import io

import torch
from _common import header, measure, median
from torch import nn

from captioner.encoders.efficientnet import EfficientNetLiteEncoder


class _Grid(nn.Module):
    """The feature map alone, as one traceable forward."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(pixels)


def candidates(size: int) -> dict[str, object]:
    plain = _Grid(EfficientNetLiteEncoder("efficientnet-lite2", fold_norms=False).net).eval()
    folded = _Grid(EfficientNetLiteEncoder("efficientnet-lite2").net).eval()
    example = torch.randn(1, 3, size, size)
    with torch.inference_mode(False), torch.no_grad():
        traced = torch.jit.optimize_for_inference(
            torch.jit.freeze(torch.jit.trace(folded, example))
        )
    runs = {
        "published (BN unfolded)": plain,
        "BN folded (library default)": folded,
        "BN folded + channels_last": _ChannelsLast(folded),
        "BN folded + jit trace/freeze": traced,
    }
    try:
        import onnxruntime
    except ImportError:
        print("onnxruntime not installed: pip install -e '.[onnx]' to include it")
        return runs
    buffer = io.BytesIO()
    torch.onnx.export(
        folded,
        (example,),
        buffer,
        dynamo=False,
        input_names=["pixels"],
        output_names=["grid"],
        dynamic_axes={"pixels": {0: "batch"}, "grid": {0: "batch"}},
    )
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = onnxruntime.InferenceSession(buffer.getvalue(), options, ["CPUExecutionProvider"])
    runs["BN folded + ONNX Runtime"] = lambda x: session.run(None, {"pixels": x.numpy()})[0]
    return runs


class _ChannelsLast:
    def __init__(self, module: nn.Module):
        self.module = module.to(memory_format=torch.channels_last)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.module(pixels.contiguous(memory_format=torch.channels_last))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    header("EfficientNet-Lite2 encoder paths, CPU")
    size = 260
    runs = candidates(size)
    reference = _Grid(EfficientNetLiteEncoder("efficientnet-lite2", fold_norms=False).net).eval()
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
                    f"  {name:32s} {ms:8.1f} ms  {batch / ms * 1000:6.1f} img/s  "
                    f"x{baseline / ms:4.2f}  max|diff| {error:.1e}"
                )


if __name__ == "__main__":
    main()
