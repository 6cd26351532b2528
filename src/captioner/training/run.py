"""`captioner train`: data, cache, Lightning Trainer, callbacks and the exported best model."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import (
    Callback,
    ModelCheckpoint,
    ProgressBar,
    TQDMProgressBar,
)
from lightning.pytorch.loggers import Logger
from torch.utils.data import DataLoader

from captioner.batch import CaptionCollator
from captioner.config import CaptionerConfig
from captioner.data import CaptionRecord, load_records, same_split
from captioner.decoder import with_token_source
from captioner.decoding import max_new_tokens_limit
from captioner.encoders import build_encoder
from captioner.features import FeatureCache, build_cache, cached_records, image_source
from captioner.hub import CONFIG_FILE as MODEL_CONFIG_FILE
from captioner.hub import TOKENIZER_FILE
from captioner.launcher import launcher_rank
from captioner.tokenizer import CaptionTokenizer
from captioner.torch_model import CaptionModel
from captioner.training.averaging import DecoderAverage
from captioner.training.config import CONFIG_FILE, TrainConfig, contradictions
from captioner.training.data import (
    CROP_VIEWS,
    CaptionSampler,
    DevImages,
    LengthBucketBatches,
    ResumableLoader,
    TrainCaptions,
)
from captioner.training.module import CaptionerModule
from captioner.training.resume import (
    CHECKPOINT_DIR,
    ExactResume,
    ResumeCheckpoint,
    StoppedStaysStopped,
    last_checkpoint,
)
from captioner.training.scst import SelfCriticalModule

log = logging.getLogger(__name__)

BEST_DIR = "best"
NON_TTY_REFRESH_STEPS = 50


class TrainingSetupError(ValueError):
    """The run cannot start: no usable data, nothing to resume, or a GPU `devices` names is
    missing. Raised before the output folder is written to."""


def extract_features(
    config: TrainConfig, splits: list[str], progress: bool = True
) -> tuple[FeatureCache, dict[str, list[CaptionRecord]]]:
    """Encode the images of `splits` once (reusing whatever is cached) and return the records
    whose image could be read. With `mirror_images` or `corner_crops`, the training split's
    augmented views are encoded too. A split left with no usable records is a
    `TrainingSetupError`."""
    if not config.data:
        raise TrainingSetupError("no data given: pass --data (a dataset folder or file)")
    try:  # read once: a split made here is logged once
        every = load_records(config.data, splits=config.data_split)
    except (OSError, ValueError) as error:
        raise TrainingSetupError(str(error)) from None
    records = {split: [r for r in every if same_split(r.split, split)] for split in splits}
    for split, found in records.items():
        if not found:
            raise TrainingSetupError(f"{config.data} has no records in split {split!r}")
    encoder = build_encoder(config.encoder).to(extraction_device(config))
    sources = [image_source(r) for split in splits for r in records[split]]
    if config.train_split in records:
        augmented = [
            (mirrored, view)
            for mirrored in ((False, True) if config.mirror_images else (False,))
            for view in (CROP_VIEWS if config.corner_crops else CROP_VIEWS[:1])
        ][1:]  # the plain view is in `sources` already
        train = records[config.train_split]
        sources += [image_source(r, mirrored, view) for mirrored, view in augmented for r in train]
    cache = build_cache(
        encoder, sources, config.cache_dir, num_workers=config.num_workers, progress=progress
    )
    usable = {split: cached_records(rs, cache) for split, rs in records.items()}
    for split, kept in usable.items():
        if not kept:
            raise TrainingSetupError(
                f"none of the {len(records[split])} images of split {split!r} in {config.data} "
                "could be read (missing or not images)"
            )
    return cache, usable


def extraction_device(config: TrainConfig) -> torch.device:
    """The GPU this process will train on, if it trains on one: a CLIP ViT-B/32 encodes
    Flickr30k's 31,783 photos in about 2 minutes on an H200 (299 images/s), against about half
    an hour on two CPU cores. Each process of a multi-GPU job takes its local rank's GPU: the
    local rank-th of those `devices` names, or of all."""
    if config.accelerator not in ("auto", "gpu", "cuda") or not torch.cuda.is_available():
        return torch.device("cpu")
    local_rank = os.environ.get("LOCAL_RANK", "0")  # set by torchrun and Lightning's launcher
    index = int(local_rank) if local_rank.isdigit() else 0
    count = torch.cuda.device_count()
    named = named_gpus(config.devices)
    if not named:
        return torch.device("cuda", index % count)
    if missing := [gpu for gpu in named if gpu >= count]:
        raise TrainingSetupError(
            f"devices={config.devices!r} names GPU {missing[0]}, but this machine has {count} "
            f"(0 to {count - 1})"
        )
    return torch.device("cuda", named[index % len(named)])  # as Lightning gives rank i the i-th


def named_gpus(devices: int | str) -> list[int] | None:
    """The GPU indices in `devices` text with a comma ("2,3", "1,"), as Lightning reads it;
    None for a count or "auto", which take the first GPUs."""
    if not isinstance(devices, str) or "," not in devices:
        return None
    parts = [part.strip() for part in devices.split(",") if part.strip()]
    return [int(part) for part in parts] if parts and all(p.isdigit() for p in parts) else None


class CaptionData(L.LightningDataModule):
    def __init__(
        self,
        config: TrainConfig,
        cache: FeatureCache,
        records: dict[str, list[CaptionRecord]],
        collator: CaptionCollator,
    ):
        super().__init__()
        self.config = config
        self.cache = cache
        self.records = records
        self.collator = collator

    def train_dataloader(self) -> DataLoader:
        dataset = TrainCaptions(self.records[self.config.train_split], self.cache)
        sampler = CaptionSampler(
            dataset,
            self.config.captions_per_image,
            self.config.seed,
            self.config.mirror_images,
            self.config.corner_crops,
        )
        return ResumableLoader(
            dataset,
            LengthBucketBatches(sampler, dataset, self.config.batch_size),
            num_workers=self.config.num_workers,
            collate_fn=self.collator,
            persistent_workers=self.config.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(
            DevImages(self.records[self.config.dev_split], self.cache),
            batch_size=max(self.config.batch_size, 100),
            num_workers=self.config.num_workers,
            collate_fn=self.collator.dev,
            generator=torch.Generator(),  # leaves the global random state to the model
        )


class ExportBest(Callback):
    """Whenever dev CIDEr improves, write the model as a safetensors folder (`save_pretrained`)."""

    def __init__(self, directory: Path, monitor: str = "val/cider"):
        self.directory = directory
        self.monitor = monitor
        self.best = float("-inf")

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        assert isinstance(module, CaptionerModule)
        score = trainer.callback_metrics.get(self.monitor)
        if trainer.sanity_checking or score is None or float(score) <= self.best:
            return
        self.best = float(score)
        if trainer.is_global_zero:
            metrics = {
                k.removeprefix("val/"): round(float(v), 4)
                for k, v in trainer.callback_metrics.items()
                if k.startswith("val/")
            }
            module.model.config.metadata.update(
                {"dev_metrics": metrics, "epoch": trainer.current_epoch}
            )
            module.model.save_pretrained(self.directory)

    def state_dict(self) -> dict:
        return {"best": self.best}

    def load_state_dict(self, state: dict) -> None:
        self.best = state["best"]


def _tokenizer(
    config: TrainConfig, records: list[CaptionRecord], output_dir: Path, resume: bool
) -> CaptionTokenizer:
    """The compact vocabulary of the training captions (CLIP's own with min_token_count 0);
    reused as saved when resuming."""
    path = output_dir / TOKENIZER_FILE
    if resume and path.is_file():
        return CaptionTokenizer.load(path)
    if config.min_token_count == 0:
        tokenizer = CaptionTokenizer()
    else:
        tokenizer = CaptionTokenizer.build_compact(
            (c for r in records for c in r.captions), min_count=config.min_token_count
        )
    tokenizer.save(path)
    return tokenizer


def train(
    config: TrainConfig,
    resume: bool = False,
    progress: bool = True,
    callbacks: list[Callback] | None = None,
) -> Path:
    """Train, keep the best model by dev CIDEr, and return the folder it was exported to.
    `callbacks` are added to the built-in ones (checkpoints, early stopping, export).

    With `resume`, continue the run in `config.output_dir` exactly from its `last.ckpt`: the
    config must be the one it was started with (`resumed_config` reads it back)."""
    config, initial = _checked_start(config, resume)
    output_dir = Path(config.output_dir)
    cache, records = extract_features(config, [config.train_split, config.dev_split], progress)
    # Seeded after feature extraction, which may or may not have run the encoder's data loader:
    # the same seed gives the same model whether or not this run filled the cache.
    L.seed_everything(config.seed, workers=True, verbose=False)
    output_dir.mkdir(parents=True, exist_ok=True)
    model = _model(config, initial, records[config.train_split], output_dir, resume)
    collator = CaptionCollator(model.tokenizer, config.decoder.max_length)
    data = CaptionData(config, cache, records, collator)
    module = _module(config, model, records[config.train_split])
    (output_dir / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2))
    last = last_checkpoint(output_dir)
    with _quiet_lightning(resume):
        trainer = _trainer(config, _callbacks(config, last, callbacks, progress), progress)
        trainer.fit(
            module, datamodule=data, ckpt_path=str(last) if resume else None, weights_only=True
        )
    best = output_dir / BEST_DIR
    if trainer.is_global_zero and (best / MODEL_CONFIG_FILE).is_file():
        from captioner.evaluation.evaluate import record_evaluation

        record_evaluation(
            best, records[config.dev_split], config.dev_split, config.cache_dir, progress
        )
    if config.wandb and trainer.is_global_zero:
        _log_wandb_artifact(trainer, best)
    return best


def _checked_start(config: TrainConfig, resume: bool) -> tuple[TrainConfig, CaptionModel | None]:
    """The config to train with and the model `init_from` names (None: a new one). Whatever
    stops the run is a TrainingSetupError here, before the output folder is written to."""
    config.validate()
    _check_hardware(config)
    output_dir = Path(config.output_dir)
    last = last_checkpoint(output_dir)
    if resume and not last.is_file():
        raise TrainingSetupError(f"nothing to resume: {last} does not exist")
    if not resume and launcher_rank() == 0:  # the other ranks start once rank 0 has written
        _check_new_output_dir(output_dir)
    initial = CaptionModel.from_pretrained(config.init_from) if config.init_from else None
    if initial is not None:  # continue from a trained model: its encoder, decoder, vocabulary
        config = dataclasses.replace(
            config, encoder=initial.config.encoder, decoder=initial.config.decoder
        ).validate()
    if resume and (saved_path := output_dir / CONFIG_FILE).is_file():
        saved = json.loads(saved_path.read_text())
        if clash := contradictions(saved, config.to_dict()):
            raise TrainingSetupError(
                f"cannot resume {output_dir} with other settings ({', '.join(clash)} differ)"
            )
    return config, initial


def _model(
    config: TrainConfig,
    initial: CaptionModel | None,
    records: list[CaptionRecord],
    output_dir: Path,
    resume: bool,
) -> CaptionModel:
    """The model to train: `initial`, or a new one over the vocabulary of `records`; its
    tokenizer saved in `output_dir` and the data it learns from in its metadata."""
    if initial is not None:
        model = initial
        # Its scores describe the model trained from, not this run's: a best/ exported before
        # this run's own evaluation (or by a run stopped before it) must not show them.
        for key in ("evaluation", "dev_metrics", "epoch"):
            model.config.metadata.pop(key, None)
        model.tokenizer.save(output_dir / TOKENIZER_FILE)
    else:
        tokenizer = _tokenizer(config, records, output_dir, resume)
        decoder = with_token_source(config.decoder, config.encoder)
        try:
            model = CaptionModel(
                CaptionerConfig(encoder=config.encoder, decoder=decoder), tokenizer
            )
        except OSError as error:  # a CLIP hub id or folder (token input) that cannot be loaded
            reason = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
            raise TrainingSetupError(f"cannot build the model: {reason}") from None
        if tokenizer.vocab is not None:  # CLIP token input reads the compact ids' CLIP rows
            model.decoder.map_clip_ids(tokenizer.vocab)
        # The exported model's default decoding must fit its decoder (a short max_length).
        generation = model.config.generation
        generation.max_new_tokens = min(
            generation.max_new_tokens, max_new_tokens_limit(model.config.decoder.max_length)
        )
    model.config.metadata.update(
        {
            "data": config.data,
            "train_split": config.train_split,
            "dev_split": config.dev_split,
            "data_split": dataclasses.asdict(config.data_split),  # `captioner eval` splits alike
        }
    )
    return model


def _module(
    config: TrainConfig, model: CaptionModel, records: list[CaptionRecord]
) -> CaptionerModule:
    """The LightningModule of `config.objective`; self-critical training rewards CIDEr-D with
    the document frequencies of the training captions `records`."""
    if config.objective == "scst":
        return SelfCriticalModule(model, config, [r.captions for r in records])
    return CaptionerModule(model, config)


def _callbacks(
    config: TrainConfig, last: Path, extra: list[Callback] | None, progress: bool
) -> list[Callback]:
    """`extra`, then checkpoints (best and `last`), early stopping, export of the best model,
    the weight average and, where no terminal shows a bar, a progress line every few steps."""
    output_dir = Path(config.output_dir)
    callbacks = [
        *(extra or []),
        ModelCheckpoint(
            dirpath=output_dir / CHECKPOINT_DIR,
            filename="best-{epoch}",
            monitor="val/cider",
            mode="max",
            save_top_k=1,
        ),
        ResumeCheckpoint(last, config.checkpoint_every_steps, config.checkpoint_every_minutes),
        ExactResume(),
        StoppedStaysStopped(
            monitor="val/cider", mode="max", patience=config.early_stopping_patience
        ),
        ExportBest(output_dir / BEST_DIR),
    ]
    if config.average_decay is not None:  # after ExportBest, which must see the average
        callbacks.append(DecoderAverage(config.average_decay))
    has_bar = any(isinstance(c, ProgressBar) for c in callbacks)
    if progress and not has_bar and not sys.stdout.isatty():
        # Lightning's Rich bar draws nothing into a log file (nohup, SLURM): tqdm writes a line
        # every `refresh_rate` steps, with the loss and the speed.
        callbacks.append(TQDMProgressBar(refresh_rate=NON_TTY_REFRESH_STEPS))
    return callbacks


def _hardware(config: TrainConfig) -> dict[str, Any]:
    """The Trainer's settings of where and how to compute."""
    return {
        "accelerator": config.accelerator,
        "devices": config.devices,
        "num_nodes": config.num_nodes,
        "strategy": config.strategy,
        # checked against PRECISIONS (TrainConfig.validate), Lightning's Literal values
        "precision": config.precision or default_precision(),
    }


def _check_hardware(config: TrainConfig) -> None:
    """Lightning checks the accelerator, devices, strategy and precision (together, and against
    the machine) only when the Trainer is built, after feature extraction and the output folder:
    a Trainer built here first turns what it refuses into one line before anything is done."""
    rank_zero = [logging.getLogger(name) for name in _RANK_ZERO_LOGGERS]
    levels = [logger.level for logger in rank_zero]
    try:
        for logger in rank_zero:  # its "GPU available" lines come again with the real one
            logger.setLevel(logging.WARNING)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            L.Trainer(**_hardware(config), logger=False, enable_checkpointing=False)
    except Exception as error:  # Lightning's own exceptions, ValueError, TypeError, ImportError
        settings = ", ".join(
            f"{key}={value!r}" for key, value in _hardware(config).items() if key != "precision"
        )
        reason = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise TrainingSetupError(f"cannot train with {settings}: {reason}") from None
    finally:
        for logger, level in zip(rank_zero, levels, strict=True):
            logger.setLevel(level)


def _trainer(config: TrainConfig, callbacks: list[Callback], progress: bool) -> L.Trainer:
    output_dir = Path(config.output_dir)
    return L.Trainer(
        max_epochs=config.epochs,
        limit_train_batches=config.steps_per_epoch,
        # Lightning's dict[str, int] is too narrow: it makes a timedelta(**max_time) of it
        max_time={"minutes": config.max_minutes} if config.max_minutes else None,  # type: ignore[dict-item]
        **_hardware(config),
        gradient_clip_val=config.grad_clip,
        logger=_logger(config, output_dir),
        callbacks=callbacks,
        default_root_dir=output_dir,
        enable_progress_bar=progress,
        enable_model_summary=progress,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,  # CaptionSampler shards itself, deterministically
        log_every_n_steps=20,
    )


# What a run writes in its output folder (besides logs of other loggers).
RUN_FILES = (CONFIG_FILE, CHECKPOINT_DIR, BEST_DIR, TOKENIZER_FILE, "logs", "wandb")


def _check_new_output_dir(output_dir: Path) -> None:
    """A new run never writes over an earlier one (its best/, checkpoints, settings) or over
    files of the user's with those names: TrainingSetupError, before anything is written."""
    if output_dir.exists() and not output_dir.is_dir():
        raise TrainingSetupError(f"--output-dir {output_dir} is a file: give a folder")
    found = [name for name in RUN_FILES if os.path.lexists(output_dir / name)]
    if found:
        raise TrainingSetupError(
            f"{output_dir} already holds {found[0]} (a training run): continue it with "
            "--resume, or give a new --output-dir"
        )


# Lightning's advice that does not apply here: the frozen encoder is in eval mode on purpose,
# the model summary cannot size bf16 weights, and a deprecation inside Lightning itself.
_LIGHTNING_NOISE = (
    r"Found \d+ module\(s\) in eval mode",
    r"Precision .* is not supported by the model summary",
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    # Epochs of a few batches (your own 40 photos) are normal here; the logger still records
    # every 20 steps, across epochs.
    r"The number of training batches \(\d+\) is smaller than the logging interval",
)
_RANK_ZERO_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
)


class _NoTips(logging.Filter):
    """Drops Lightning's "Tip:" lines, which advertise its cloud products."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in record.getMessage()[:10]


@contextlib.contextmanager
def _quiet_lightning(resume: bool) -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in _RANK_ZERO_LOGGERS]
    tips = _NoTips()
    noise = list(_LIGHTNING_NOISE)
    if resume:  # a resumed run's checkpoint folder holds its checkpoints, as it should
        noise.append(r"Checkpoint directory .* exists and is not empty")
    with warnings.catch_warnings():
        for pattern in noise:
            warnings.filterwarnings("ignore", message=pattern)
        for logger in loggers:
            logger.addFilter(tips)
        try:
            yield
        finally:
            for logger in loggers:
                logger.removeFilter(tips)


def default_precision() -> str:
    """bf16 mixed precision where the hardware does bf16 natively (GPUs, and CPUs with
    AVX512-BF16 or AMX), where it trains faster than fp32; `bench/training_throughput.py
    --bf16` times a step each way."""
    if torch.cuda.is_available():
        return "bf16-mixed"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "32-true"
    return "bf16-mixed" if " avx512_bf16" in flags or " amx_bf16" in flags else "32-true"


def _logger(config: TrainConfig, output_dir: Path) -> Logger:
    if config.wandb:
        from lightning.pytorch.loggers import WandbLogger

        # WANDB_MODE=offline works with no network; `wandb sync` uploads later.
        return WandbLogger(
            project=config.wandb_project, save_dir=str(output_dir), config=config.to_dict()
        )
    from lightning.pytorch.loggers import CSVLogger

    return CSVLogger(save_dir=str(output_dir), name="logs")


def _log_wandb_artifact(trainer: L.Trainer, best: Path) -> None:
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    assert isinstance(trainer.logger, WandbLogger)  # _logger's, with config.wandb
    artifact = wandb.Artifact(
        "captioner-model",
        type="model",
        metadata=json.loads((best / MODEL_CONFIG_FILE).read_text())["metadata"],
    )
    artifact.add_dir(str(best))
    trainer.logger.experiment.log_artifact(artifact)
