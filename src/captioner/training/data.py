"""Datasets over cached encoder grids, and the collate function that runs the tokenizer."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset, Sampler

from captioner.data import CaptionRecord
from captioner.features import FeatureCache, ImageSource, fingerprint
from captioner.tokenizer import CaptionTokenizer

log = logging.getLogger(__name__)


def image_source(record: CaptionRecord, mirrored: bool = False) -> ImageSource:
    return ImageSource(record.image_id, record.image, mirrored)


# "left" <-> "right" in the three casings captions use.
_OTHER_SIDE = {
    side: other
    for a, b in (("left", "right"), ("right", "left"))
    for side, other in ((a, b), (a.capitalize(), b.capitalize()), (a.upper(), b.upper()))
}
_SIDES = re.compile(r"\b(" + "|".join(_OTHER_SIDE) + r")\b")


def mirror_caption(text: str) -> str:
    """The caption of the mirrored image: "left" and "right" trade places."""
    return _SIDES.sub(lambda match: _OTHER_SIDE[match.group(0)], text)


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


# A training item: an image (by position), which of its captions to train on, and whether the
# image is seen mirrored.
ItemKey = tuple[int, tuple[int, ...], bool]


class TrainCaptions(Dataset):
    """Items are an image's cached grid with some of its captions; `CaptionSampler` decides
    which captions. One grid serves all its captions, so the image side is computed once.
    A mirrored item reads the mirrored image's grid and swaps "left" and "right" in captions."""

    def __init__(self, records: Sequence[CaptionRecord], cache: FeatureCache | None):
        self.records = list(records)
        self.cache = cache
        self.keys = [
            {mirrored: fingerprint(image_source(r, mirrored)) for mirrored in (False, True)}
            for r in self.records
        ]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: ItemKey) -> tuple[torch.Tensor, list[str]]:
        image, captions, mirrored = key
        grid = torch.from_numpy(self.cache[self.keys[image][mirrored]].copy())
        texts = [self.records[image].captions[j] for j in captions]
        return grid, [mirror_caption(t) for t in texts] if mirrored else texts


class CaptionSampler(Sampler[ItemKey]):
    """Which captions an epoch trains on and in what order, as a pure function of (seed, epoch):
    so a resumed run sees exactly what an uninterrupted one would. "random" takes one caption
    per image each epoch, "all" every caption. With `mirror`, each image is seen mirrored in a
    random half of the epochs. Under DDP each rank takes its own equal share."""

    def __init__(
        self, dataset: TrainCaptions, captions_per_image: str, seed: int, mirror: bool = False
    ):
        if captions_per_image not in ("random", "all"):
            raise ValueError("captions_per_image must be 'random' or 'all'")
        self.counts = [len(r.captions) for r in dataset.records]
        self.every_caption = captions_per_image == "all"
        self.mirror = mirror
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @staticmethod
    def _rank_and_world() -> tuple[int, int]:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def __len__(self) -> int:
        return len(self.counts) // self._rank_and_world()[1]

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(len(self.counts), generator=generator).tolist()
        picks = (
            torch.rand(len(self.counts), generator=generator) * torch.tensor(self.counts)
        ).long()
        mirrored = (torch.rand(len(self.counts), generator=generator) < 0.5) & self.mirror
        rank, world = self._rank_and_world()
        share = len(order) // world
        for image in order[rank * share : (rank + 1) * share]:
            captions = range(self.counts[image]) if self.every_caption else [int(picks[image])]
            yield image, tuple(captions), bool(mirrored[image])


class LengthBucketBatches(Sampler[list[ItemKey]]):
    """Batches of captions of similar length, so little compute goes into padding (on
    Flickr8k the padded length falls from about twice the mean caption length to close to it).

    The sampler's shuffled order is cut into windows of `window` batches; each window is sorted
    by caption length (in words) and batched, and the batches are shuffled again, all as a pure
    function of the sampler's (seed, epoch). Lightning sets the epoch through `.sampler`."""

    def __init__(
        self, sampler: CaptionSampler, dataset: TrainCaptions, batch_size: int, window: int = 50
    ):
        self.sampler = sampler
        self.batch_size = batch_size
        self.window = window
        self.words = [[len(c.split()) for c in r.captions] for r in dataset.records]

    def _length(self, key: ItemKey) -> int:
        image, captions, _ = key
        return max(self.words[image][j] for j in captions)

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.batch_size)

    def __iter__(self):
        items = list(self.sampler)
        span = self.window * self.batch_size
        batches = []
        for start in range(0, len(items), span):
            window = sorted(items[start : start + span], key=self._length)
            batches += [
                window[i : i + self.batch_size] for i in range(0, len(window), self.batch_size)
            ]
        generator = torch.Generator().manual_seed(
            self.sampler.seed * 100_003 + self.sampler.epoch + 1
        )
        for index in torch.randperm(len(batches), generator=generator).tolist():
            yield batches[index]


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
    features: torch.Tensor  # (images, image_tokens, dim) float32
    ids: torch.Tensor  # (captions, length): start, caption, end, then end-token padding
    lengths: torch.Tensor  # tokens in each caption, start and end included
    image_index: torch.Tensor  # (captions,): which image each caption describes
    captions: list[list[str]]  # the texts, per image (rewards in self-critical training)

    def to(self, device: torch.device) -> Batch:
        tensors = (self.features, self.ids, self.lengths, self.image_index)
        return Batch(*(t.to(device) for t in tensors), self.captions)


class CaptionCollator:
    """Tokenizes in the DataLoader's collate step, so it runs in the loader workers."""

    def __init__(self, tokenizer: CaptionTokenizer, max_length: int):
        self.tokenizer = tokenizer
        self.max_length = max_length

    def tokenize(self, features: torch.Tensor, captions: Sequence[Sequence[str]]) -> Batch:
        """`captions[i]` are the captions of image i."""
        texts = [text for group in captions for text in group]
        image_index = torch.tensor([i for i, group in enumerate(captions) for _ in group])
        ids = self.tokenizer.batch(texts, self.max_length)
        lengths = (ids != self.tokenizer.pad_id).sum(dim=1) + 1  # + the first end token
        return Batch(features.float(), ids, lengths, image_index, [list(g) for g in captions])

    def __call__(self, items: list[tuple[torch.Tensor, list[str]]]) -> Batch:
        return self.tokenize(
            torch.stack([grid for grid, _ in items]), [texts for _, texts in items]
        )

    def dev(self, items: list[tuple[torch.Tensor, str, list[str]]]):
        """Dev batches: the grids, image ids and reference lists."""
        features = torch.stack([grid for grid, _, _ in items]).float()
        return features, [image_id for _, image_id, _ in items], [refs for _, _, refs in items]
