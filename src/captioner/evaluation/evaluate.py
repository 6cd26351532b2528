"""`captioner eval`: caption a split, then score it like the papers do."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from captioner.batch import CaptionCollator
from captioner.config import GenerationConfig
from captioner.data import CaptionRecord
from captioner.evaluation.clipscore import CLIPScorer
from captioner.evaluation.metrics import caption_metrics
from captioner.features import (
    FeatureCache,
    build_cache,
    cached_records,
    image_source,
    record_key,
)
from captioner.hub import CONFIG_FILE
from captioner.model_card import write_model_card
from captioner.objective import teacher_forced
from captioner.torch_model import CaptionModel


@torch.inference_mode()
def evaluate(
    model: CaptionModel,
    records: list[CaptionRecord],
    options: Mapping[str, Any] | None = None,
    cache_dir: str | Path | None = None,
    batch_size: int = 50,
    meteor: bool = True,
    progress: bool = True,
    clip: CLIPScorer | None = None,
    clip_rerank: bool = False,
) -> tuple[dict, dict[str, str]]:
    """Metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D, teacher-forced token accuracy; with
    `clip`, CLIPScore and RefCLIPScore) and the prediction per image id, decoding with the
    model's own settings but for the GenerationConfig fields in `options` (e.g. num_beams=1).
    An unknown or out-of-range option is a ValueError. With `clip_rerank`, the final beams
    are re-ranked by CLIPScore too, and `scores["clip_reranked"]` holds the same metrics for
    the captions that wins. Encoder grids come from (and go into) the feature cache. Records
    whose image cannot be read are left out; a ValueError if none is left."""
    started = time.perf_counter()
    generation = model.config.generation
    if options:
        generation = generation.replace(**options)
    if clip_rerank:
        if clip is None:
            raise ValueError("re-ranking by CLIPScore needs a CLIP model (--clip)")
        if generation.do_sample or generation.num_beams < 2:
            raise ValueError("re-ranking by CLIPScore needs beam search: a beam of 2 or more")
        generation = generation.replace(num_return_sequences=generation.num_beams)
    generation.validate()
    if batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size}")
    cache = build_cache(
        model.encoder, [image_source(r) for r in records], cache_dir, progress=progress
    )
    records = cached_records(records, cache)
    if not records:
        raise ValueError("nothing to evaluate: none of the images could be read")
    beams, token_accuracy = _decode(model, records, cache, generation, batch_size)
    predictions = {image_id: texts[0] for image_id, texts in beams.items()}
    references = {r.image_id: r.captions for r in records}
    scores: dict[str, Any] = caption_metrics(predictions, references, meteor=meteor)
    scores["token_accuracy"] = token_accuracy
    if clip is not None:
        scores.update(_clip_scores(clip, records, predictions))
    if clip_rerank and clip is not None:  # checked above: re-ranking has a CLIP model
        images = [r.image for r in records]
        chosen = clip.rerank(images, [beams[r.image_id] for r in records])
        reranked = {r.image_id: beams[r.image_id][k] for r, k in zip(records, chosen)}
        scores["clip_reranked"] = {
            **caption_metrics(reranked, references, meteor=meteor),
            **_clip_scores(clip, records, reranked),
            "changed": sum(k > 0 for k in chosen),  # images whose caption re-ranking replaced
        }
    scores["images"] = len(records)
    scores["seconds"] = round(time.perf_counter() - started, 2)
    return scores, predictions


def _decode(
    model: CaptionModel,
    records: list[CaptionRecord],
    cache: FeatureCache,
    generation: GenerationConfig,
    batch_size: int,
) -> tuple[dict[str, list[str]], float]:
    """Each image's final beams (best first), and the teacher-forced token accuracy over every
    reference caption."""
    collator = CaptionCollator(model.tokenizer, model.config.decoder.max_length)
    beams: dict[str, list[str]] = {}
    correct = counted = 0
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        grids = [cache[record_key(r)] for r in chunk]
        features = torch.from_numpy(np.stack(grids)).float().to(model.device)
        for record, caption in zip(chunk, model.generate_from_features(features, generation)):
            beams[record.image_id] = [caption.text, *(a.text for a in caption.alternatives)]
        batch = collator.tokenize(features, [r.captions for r in chunk]).to(model.device)
        _, right, count = teacher_forced(model, batch)
        correct += int(right)
        counted += int(count)
    return beams, correct / max(counted, 1)


# What a saved model's card reports of `evaluate`'s scores (METEOR needs Java: not recorded).
RECORDED_METRICS = ("bleu1", "bleu4", "rouge_l", "cider", "token_accuracy")


def record_evaluation(
    directory: str | Path,
    records: list[CaptionRecord],
    split: str,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Score the model saved in `directory` on `records` exactly as `captioner eval` does (the
    same loading, decoding and metrics), and record the scores, with what they measured, in
    its config's metadata and model card: so the card's figures are the ones `captioner eval`
    prints on that split. Returns the recorded entry."""
    directory = Path(directory)
    model = CaptionModel.from_pretrained(directory)
    scores, _ = evaluate(model, records, cache_dir=cache_dir, meteor=False, progress=progress)
    generation = model.config.generation
    entry = {
        "split": split,
        "images": scores["images"],
        "num_beams": generation.num_beams,
        "max_new_tokens": generation.max_new_tokens,
        "metrics": {name: round(scores[name], 4) for name in RECORDED_METRICS},
    }
    model.config.metadata["evaluation"] = entry
    model.config.save(directory / CONFIG_FILE)
    write_model_card(directory, model.config)
    return entry


def _clip_scores(
    clip: CLIPScorer, records: list[CaptionRecord], predictions: dict[str, str]
) -> dict[str, float | None]:
    found = clip.score(
        [r.image for r in records],
        [predictions[r.image_id] for r in records],
        [r.captions for r in records],
    )
    return {"clip_score": found.clip_score, "refclip_score": found.refclip_score}


PREDICTION_KEYS = ("image_id", "caption", "references")  # one line of `save_predictions`
_FIRST_LINE_LIMIT = 1 << 20  # characters read to recognise one; a line of ours has hundreds


def is_predictions_file(path: str | Path) -> bool:
    """Whether `path` is a file `save_predictions` wrote: its first line is one of its objects.
    Anything else there is the user's, which an eval run must not replace unasked."""
    try:
        with Path(path).open(encoding="utf-8") as lines:
            first = json.loads(lines.readline(_FIRST_LINE_LIMIT))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(first, dict) and tuple(first) == PREDICTION_KEYS


def save_predictions(
    path: str | Path, predictions: dict[str, str], records: list[CaptionRecord]
) -> None:
    """One JSON line per image: id, prediction, references."""
    by_id = {r.image_id: r for r in records}
    with Path(path).open("w") as out:
        for image_id, text in predictions.items():
            out.write(
                json.dumps(dict(zip(PREDICTION_KEYS, (image_id, text, by_id[image_id].captions))))
                + "\n"
            )
