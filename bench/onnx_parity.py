"""The exported decoder against PyTorch on Flickr8k dev: captions and CIDEr-D per runtime.

For each runtime over the same PyTorch weights (`torch`, `onnx-fp32`: the float32 graphs,
`onnx`: the int8 graphs that `runtime="auto"` uses), greedy and beam 3 over the same encoder grids
(`captioner eval`'s feature cache and scoring, METEOR left out): BLEU-4 and CIDEr-D the
coco-caption way, and how many captions equal the first runtime's (PyTorch's by default; seconds
include the teacher-forced token accuracy, in PyTorch, as `captioner eval` computes it). The
README's "Exported model (ONNX)" figures come from this script.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from _common import REPO, header

from captioner import Captioner
from captioner.batch import CaptionCollator
from captioner.data import CaptionRecord, load_records
from captioner.evaluation.metrics import caption_metrics
from captioner.features import build_cache, cached_records, image_source, record_key
from captioner.objective import teacher_forced
from captioner.torch_model import CaptionModel

RUNTIMES = ("torch", "onnx-fp32", "onnx")


@torch.inference_mode()
def evaluate(
    model: CaptionModel,
    captioner: Captioner,
    records: list[CaptionRecord],
    num_beams: int,
    cache_dir: str,
    batch_size: int = 50,
) -> tuple[dict, dict[str, str]]:
    """`captioner.evaluation.evaluate.evaluate` (METEOR left out) with the captions decoded by
    `captioner` (one runtime over `model`): the same feature cache, batches, scores and
    teacher-forced token accuracy (in PyTorch)."""
    generation = model.config.generation.replace(num_beams=num_beams)
    cache = build_cache(
        model.encoder, [image_source(r) for r in records], cache_dir, progress=False
    )
    records = cached_records(records, cache)
    collator = CaptionCollator(model.tokenizer, model.config.decoder.max_length)
    predictions: dict[str, str] = {}
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        features = np.stack([cache[record_key(r)] for r in chunk]).astype(np.float32)
        for record, caption in zip(chunk, captioner.generate_from_features(features, generation)):
            predictions[record.image_id] = caption.text
        batch = collator.tokenize(torch.from_numpy(features), [r.captions for r in chunk])
        teacher_forced(model, batch.to(model.device))
    references = {r.image_id: r.captions for r in records}
    return caption_metrics(predictions, references, meteor=False), predictions


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
    model = CaptionModel.from_pretrained(args.model)
    for beam in args.beams:
        expected = None
        for runtime in args.runtimes:
            captioner = model.captioner(runtime)  # the graphs exported now, if not in the cache
            started = time.perf_counter()
            scores, predictions = evaluate(model, captioner, records, beam, args.cache_dir)
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
