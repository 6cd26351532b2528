"""One decoding step of the exported decoder (`decoder_step`, int8 and fp32) in ONNX Runtime on
CPU: ms per step at several rows and images (beam search hands each image once for its beams),
on one thread and on two, and the graph's nodes before and after ONNX Runtime's fusions.

Each figure is the median over `--repeats` captions of 12 steps from an empty past, the step's
inputs fed as `captioner.runtime.onnx` feeds them; the step's cross-attention keys and values
are random (speed does not depend on them). `captioner.runtime.onnx.ONE_THREAD_ROWS` is chosen
from these.
"""

from __future__ import annotations

import argparse
import tempfile
from functools import partial
from pathlib import Path

import numpy as np
import onnx
from _common import header, load_torch_model, measure, median

from captioner.onnx.export import FILES, export_decoder, kv_shape
from captioner.runtime.onnx import cpu_session, kv_names

# (rows, images): one caption; one image's 3 beams; a greedy batch; a beam-3 batch; and the same
# rows with the image repeated per beam (what beam search fed before images were shared)
SHAPES = [(1, 1), (3, 1), (16, 16), (48, 16), (48, 48)]
STEPS = 12


def optimised_nodes(graph: Path, scratch: Path) -> int:
    """Nodes left after ONNX Runtime's basic and extended fusions (the ones saved portably)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(scratch / f"optimised-{graph.name}")
    onnxruntime.InferenceSession(str(graph), options, ["CPUExecutionProvider"])
    return len(onnx.load(options.optimized_model_filepath).graph.node)


def caption(session, config, rows: int, cross: dict[str, np.ndarray]) -> None:
    """`STEPS` steps of `rows` rows from an empty past, fed as the runtime feeds them."""
    past_names = kv_names("past", config.n_layers)
    past = [np.zeros(kv_shape(config, rows, 0), np.float32)] * len(past_names)
    ids = np.ones((rows, 1), np.int64)
    for _ in range(STEPS):
        _, *past, _ = session.run(None, {"ids": ids, **cross, **dict(zip(past_names, past))})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model folder (default: the bundled model)")
    parser.add_argument("--repeats", type=int, default=20, help="captions of 12 steps per figure")
    args = parser.parse_args()

    header("Decoder step, ONNX Runtime on CPU")
    model, name = load_torch_model(args.model)
    config = model.decoder.config
    print(f"model: {name}; {STEPS} steps a caption, medians over {args.repeats} captions\n")
    cross_names = kv_names("cross", config.n_layers)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        export_decoder(model.decoder, scratch)
        for variant in ("int8", "fp32"):
            graph = scratch / FILES[variant]["step"]
            nodes = len(onnx.load(str(graph)).graph.node)
            fused = optimised_nodes(graph, scratch)
            print(f"{variant}: {nodes} nodes as exported, {fused} after fusions")
            print("| rows | images | 1 thread | 2 threads |")
            print("| ---: | ---: | ---: | ---: |")
            sessions = {threads: cpu_session(graph, threads) for threads in (1, 2)}
            for rows, images in SHAPES:
                cross = {
                    n: rng.normal(size=kv_shape(config, images, config.image_tokens)).astype(
                        np.float32
                    )
                    for n in cross_names
                }
                figures = [
                    median(measure(partial(caption, session, config, rows, cross), args.repeats))
                    * 1000
                    / STEPS
                    for session in sessions.values()
                ]
                print(f"| {rows} | {images} | {figures[0]:.2f} ms | {figures[1]:.2f} ms |")
            print()


if __name__ == "__main__":
    main()
