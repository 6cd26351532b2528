"""Datasets over cached encoder grids, and the collate function that runs the tokenizer."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset, Sampler

from captioner.data import CaptionRecord
from captioner.features import FeatureCache, ImageSource, fingerprint
from captioner.tokenizer import CaptionTokenizer

log = logging.getLogger(__name__)


def image_source(record: CaptionRecord) -> ImageSource:
    return ImageSource(record.image_id, record.image)


def cached_records(records: Sequence[CaptionRecord], cache: FeatureCache) -> list[CaptionRecord]:
    """The records whose image made it into the cache (unreadable images were skipped)."""
    kept = [r for r in records if fingerprint(image_source(r)) in cache]
    if len(kept) < len(records):
        log.warning(
            "%d of %d images have no features and are skipped",
            len(records) - len(kept),
            len(records),
        )
    return kept


class TrainCaptions(Dataset):
    """One item per (image, caption) pair; `CaptionSampler` picks which pairs an epoch visits.
    The image grid comes from the cache."""

    def __init__(self, records: Sequence[CaptionRecord], cache: FeatureCache):
        self.records = list(records)
        self.cache = cache
        self.keys = [fingerprint(image_source(r)) for r in self.records]
        self.pairs = [(i, j) for i, r in enumerate(self.records) for j in range(len(r.captions))]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        image, caption = self.pairs[index]
        grid = torch.from_numpy(self.cache[self.keys[image]].copy())
        return grid, self.records[image].captions[caption]


class CaptionSampler(Sampler[int]):
    """Which pairs an epoch visits and in what order, as a pure function of (seed, epoch): so a
    resumed run sees exactly what an uninterrupted one would. "random" takes one caption per
    image each epoch, "all" every caption. Under DDP each rank takes its own equal share."""

    def __init__(self, dataset: TrainCaptions, captions_per_image: str, seed: int):
        if captions_per_image not in ("random", "all"):
            raise ValueError("captions_per_image must be 'random' or 'all'")
        counts = torch.tensor([len(r.captions) for r in dataset.records])
        self.counts = counts
        self.offsets = torch.cumsum(counts, 0) - counts
        self.every_caption = captions_per_image == "all"
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _selected(self) -> int:
        return int(self.counts.sum()) if self.every_caption else len(self.counts)

    @staticmethod
    def _rank_and_world() -> tuple[int, int]:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def __len__(self) -> int:
        return self._selected() // self._rank_and_world()[1]

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        if self.every_caption:
            indices = torch.randperm(self._selected(), generator=generator)
        else:
            pick = (torch.rand(len(self.counts), generator=generator) * self.counts).long()
            chosen = self.offsets + pick
            indices = chosen[torch.randperm(len(chosen), generator=generator)]
        rank, world = self._rank_and_world()
        share = len(indices) // world
        return iter(indices[rank * share : (rank + 1) * share].tolist())


class DevImages(Dataset):
    """One item per image with all its reference captions (for teacher-forced loss and metrics)."""

    def __init__(self, records: Sequence[CaptionRecord], cache: FeatureCache):
        self.records = list(records)
        self.cache = cache
        self.keys = [fingerprint(image_source(r)) for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str, list[str]]:
        record = self.records[index]
        grid = torch.from_numpy(self.cache[self.keys[index]].copy())
        return grid, record.image_id, record.captions


@dataclass
class Batch:
    features: torch.Tensor  # (batch, image_tokens, dim) float32
    ids: torch.Tensor  # (batch, length): start, caption, end, then end-token padding
    lengths: torch.Tensor  # tokens in each row, start and end included

    def to(self, device: torch.device) -> Batch:
        return Batch(self.features.to(device), self.ids.to(device), self.lengths.to(device))


class CaptionCollator:
    """Tokenizes in the DataLoader's collate step, so it runs in the loader workers."""

    def __init__(self, tokenizer: CaptionTokenizer, max_length: int):
        self.tokenizer = tokenizer
        self.max_length = max_length

    def tokenize(self, features: torch.Tensor, texts: Sequence[str]) -> Batch:
        ids = self.tokenizer.batch(texts, self.max_length)
        lengths = (ids != self.tokenizer.pad_id).sum(dim=1) + 1  # + the first end token
        return Batch(features.float(), ids, lengths)

    def __call__(self, items: list[tuple[torch.Tensor, str]]) -> Batch:
        return self.tokenize(torch.stack([grid for grid, _ in items]), [text for _, text in items])

    def dev(self, items: list[tuple[torch.Tensor, str, list[str]]]):
        """Dev batches: the grids, image ids and reference lists."""
        features = torch.stack([grid for grid, _, _ in items]).float()
        return features, [image_id for _, image_id, _ in items], [refs for _, _, refs in items]
