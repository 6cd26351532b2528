"""The exported decoder against PyTorch on Flickr8k dev: captions and CIDEr-D per runtime.

For each runtime (`torch`, `onnx-fp32`: the float32 graphs, `onnx`: the int8 graphs that
`runtime="auto"` uses on CPU), greedy and beam 3 over the same encoder grids (`captioner eval`'s
feature cache and scoring, METEOR left out): BLEU-4 and CIDEr-D the coco-caption way, and how
many captions equal the first runtime's (PyTorch's by default; seconds include the teacher-forced token accuracy, in PyTorch). The README's
"Exported model (ONNX)" figures come from this script.
"""

from __future__ import annotations

import argparse
import time

from _common import REPO, header

from captioner import Captioner
from captioner.data import load_records
from captioner.evaluation.evaluate import evaluate

RUNTIMES = ("torch", "onnx-fp32", "onnx")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", help="model folder (default: the bundled model)")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "datasets" / "flickr8k"))
    parser.add_argument("--split", default="dev")
    parser.add_argument("--limit", type=int, help="only the first N images")
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--runtimes", nargs="+", choices=RUNTIMES, default=list(RUNTIMES))
    parser.add_argument("--cache-dir", default=str(REPO / "cache"), help="feature cache")
    args = parser.parse_args()
    header("Exported decoder (ONNX Runtime) against PyTorch, captions and CIDEr-D")

    records = load_records(args.data, args.split)[: args.limit]
    print(f"{len(records)} images of {args.data} {args.split}\n")
    print(
        f"| runtime | beam | BLEU-4 | CIDEr-D | captions equal to {args.runtimes[0]}'s | seconds |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for beam in args.beams:
        expected = None
        for runtime in args.runtimes:
            model = Captioner.from_pretrained(args.model, runtime=runtime)
            started = time.perf_counter()
            scores, predictions = evaluate(
                model, records, beam, args.cache_dir, meteor=False, progress=False
            )
            seconds = time.perf_counter() - started
            expected = expected or predictions
            same = sum(predictions[key] == text for key, text in expected.items())
            print(
                f"| {runtime} | {beam} | {scores['bleu4']:.4f} | {scores['cider']:.4f} "
                f"| {same} / {len(expected)} | {seconds:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
