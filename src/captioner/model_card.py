"""The model card `save_pretrained` writes: README.md with the Hugging Face metadata block, so a
saved folder pushed to the hub is found as an image-to-text model and says how to use it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from captioner.config import CaptionerConfig
from captioner.hub import BUNDLED_DIR

CARD_FILE = "README.md"
# The last line of every card this module writes: a card without it is the user's, kept as is.
MARKER = "<!-- written by captioner's save_pretrained; edit freely, then delete this line -->"
# The code's licence, the default for the weights unless metadata["license"] says otherwise.
DEFAULT_LICENSE = "apache-2.0"
# Metric names in the training metadata -> the hub's metric ids.
_HUB_METRICS = {
    "bleu1": "bleu",
    "bleu4": "bleu",
    "meteor": "meteor",
    "rouge_l": "rouge",
    "cider": "cider",
}
_METRIC_LABELS = {
    "bleu1": "BLEU-1",
    "bleu2": "BLEU-2",
    "bleu3": "BLEU-3",
    "bleu4": "BLEU-4",
    "meteor": "METEOR",
    "rouge_l": "ROUGE-L",
    "cider": "CIDEr-D",
    "loss": "loss",
    "token_acc": "token accuracy",
    "token_accuracy": "token accuracy",
}


def write_model_card(directory: str | Path, config: CaptionerConfig) -> Path | None:
    """Write README.md into `directory` unless the user has replaced the card written before."""
    path = Path(directory) / CARD_FILE
    if path.is_file() and MARKER not in path.read_text(encoding="utf-8", errors="replace"):
        return None
    bundled = path.parent.resolve() == BUNDLED_DIR.resolve()
    name = path.parent.resolve().name
    path.write_text(model_card(config, name, None if bundled else name), encoding="utf-8")
    return path


def model_card(config: CaptionerConfig, name: str, load_as: str | None) -> str:
    """The card's text: metadata block, what the model is, how to use it, how it scored.
    `load_as`: what `from_pretrained` is given (None: the model bundled with captioner)."""
    metadata = config.metadata
    dataset = dataset_name(metadata)
    lines = ["---", *_yaml(_front_matter(config, dataset)), "---", "", f"# {name}", ""]
    lines += [_description(config), "", *_usage(config, load_as)]
    if dataset:
        lines += ["", "## Training data", "", f"`{dataset}`" + _splits(metadata) + "."]
    lines += _evaluation(metadata, load_as)
    lines += ["", MARKER, ""]
    return "\n".join(lines)


def _front_matter(config: CaptionerConfig, dataset: str | None) -> dict[str, Any]:
    """The hub's metadata block: how the hub finds and files the model."""
    header: dict[str, Any] = {
        "library_name": "captioner",
        "pipeline_tag": "image-to-text",
        "license": config.metadata.get("license", DEFAULT_LICENSE),
        "tags": ["image-captioning", "captioner"],
    }
    if dataset:
        header["datasets"] = [dataset]
    metrics = _evaluated(config.metadata)[1] or _dev_metrics(config.metadata)
    hub_metrics = sorted({_HUB_METRICS[k] for k in metrics if k in _HUB_METRICS})
    if hub_metrics:
        header["metrics"] = hub_metrics
    if config.encoder.source and config.encoder.source.count("/") == 1:
        header["base_model"] = config.encoder.source
    return header


def _description(config: CaptionerConfig) -> str:
    decoder, blocks = config.decoder, config.encoder.trained_blocks
    trained = (
        f" (frozen but for its last {'block' if blocks == 1 else f'{blocks} blocks'} and head "
        "convolution, which were trained with the decoder)"
        if blocks
        else ""
    )
    return (
        f"An image captioning model for the `captioner` library: the "
        f"{'' if blocks else 'frozen '}`{config.encoder.name}` image encoder"
        + (f" (`{config.encoder.source}`)" if config.encoder.source else "")
        + trained
        + f" and a {decoder.n_layers}-layer, {decoder.d_model}-wide transformer decoder that "
        f"writes the caption while attending to the encoder's {decoder.image_tokens} patch "
        f"embeddings ({decoder.vocab_size:,}-token vocabulary)."
    )


def _usage(config: CaptionerConfig, load_as: str | None) -> list[str]:
    generation = config.generation
    return [
        "## Usage",
        "",
        "```python",
        "from captioner import Captioner",
        "",
        f"model = Captioner.from_pretrained({json.dumps(load_as)})  # this folder, or its hub id"
        if load_as
        else "model = Captioner.from_pretrained()  # the model bundled with captioner",
        'print(model.caption("photo.jpg")[0].text)',
        "```",
        "",
        "```bash",
        "captioner caption photos/ "
        + (f"--model {load_as} " if load_as else "")
        + "--output captions.jsonl",
        "```",
        "",
        f"Decoding defaults: beam size {generation.num_beams}, at most "
        f"{generation.max_new_tokens} tokens, no repeated {generation.no_repeat_ngram_size}-grams.",
    ]


def _evaluation(metadata: dict[str, Any], load_as: str | None) -> list[str]:
    """The scores of `captioner eval` where training recorded them after its last epoch, and
    the checkpoint's validation scores (how it was chosen), each saying what it measured."""
    evaluation, scores = _evaluated(metadata)
    chosen = _dev_metrics(metadata)
    if not scores and not chosen:
        return []
    lines = ["", "## Evaluation", ""]
    if scores:
        split, data = evaluation.get("split", "dev"), metadata.get("data") or "DATA"
        model = f" --model {load_as}" if load_as else ""
        lines += [
            f"On the {evaluation.get('images', '?')} images of the `{split}` split, decoded as "
            f"the model decodes by default (num_beams {evaluation.get('num_beams', '?')}, at "
            f"most {evaluation.get('max_new_tokens', '?')} tokens), scored by "
            "`captioner.evaluation` (the coco-caption metrics; CIDEr-D's document frequencies "
            "from these images' references; METEOR, which needs Java, left out): what "
            f"`captioner eval{model} --data {data} --split {split}` prints.",
            "",
            *_table(scores),
        ]
    if chosen:
        lines += (
            ["", "The checkpoint was chosen by its dev CIDEr-D at validation:", ""]
            if scores
            else [
                f"On the `{metadata.get('dev_split', 'dev')}` split, as measured at validation "
                "when this checkpoint was kept:",
                "",
            ]
        )
        lines += _table(chosen)
        lines += [
            "",
            "Validation decodes as the training run's `validation_generation` setting says "
            "(greedy unless the preset sets a beam), so these figures may differ from those "
            "of `captioner eval`, which decodes as the model does by default.",
        ]
    return lines


def _table(metrics: dict[str, float]) -> list[str]:
    return [
        "| " + " | ".join(_METRIC_LABELS.get(k, k) for k in metrics) + " |",
        "| " + " | ".join("---:" for _ in metrics) + " |",
        "| " + " | ".join(f"{v:.4g}" for v in metrics.values()) + " |",
    ]


def dataset_name(metadata: dict[str, Any]) -> str | None:
    """`hf:owner/name` -> owner/name; a local dataset folder -> its name (e.g. flickr8k)."""
    source = metadata.get("data") or metadata.get("dataset")
    if not isinstance(source, str) or not source:
        return None
    if source.startswith("hf:"):
        return source[3:].split(":")[0]
    return Path(source).name or source


def _dev_metrics(metadata: dict[str, Any]) -> dict[str, float]:
    return _numbers(metadata.get("dev_metrics"))


def _evaluated(metadata: dict[str, Any]) -> tuple[dict[str, Any], dict[str, float]]:
    """What `record_evaluation` wrote (split, images, decoding) and its scores."""
    evaluation = metadata.get("evaluation")
    if not isinstance(evaluation, dict):
        return {}, {}
    return evaluation, _numbers(evaluation.get("metrics"))


def _numbers(metrics: Any) -> dict[str, float]:
    if not isinstance(metrics, dict):
        return {}
    return {
        str(k).lower(): float(v)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def _splits(metadata: dict[str, Any]) -> str:
    train, dev = metadata.get("train_split"), metadata.get("dev_split")
    if train and dev:
        return f": trained on its `{train}` split, selected on `{dev}`"
    return ""


def _yaml(values: dict[str, Any]) -> list[str]:
    """Flat YAML: JSON scalars are valid YAML, so strings are quoted the JSON way."""
    lines = []
    for key, value in values.items():
        if isinstance(value, list):
            lines.append(f"{key}:")
            lines += [f"- {json.dumps(item)}" for item in value]
        else:
            lines.append(f"{key}: {json.dumps(value)}")
    return lines
