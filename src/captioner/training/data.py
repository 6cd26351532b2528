"""Datasets over cached encoder grids, and the samplers that order an epoch reproducibly."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import Any, cast

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from captioner.data import CaptionRecord
from captioner.features import FeatureCache, record_key
from captioner.transforms import CENTRE, CropView

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


# The squares a training image is seen through: the centre one, as at caption time, then
# (`corner_crops`) the top left and bottom right corners of the image zoomed in by 15%, so that
# each keeps about three quarters of the centre square's area (with `mirror_images`, the other
# two corners too).
CROP_VIEWS = (CENTRE, CropView(0.0, 1.15), CropView(1.0, 1.15))

# A training item: an image (by position), which of its captions to train on, whether the
# image is seen mirrored, and which of `CROP_VIEWS` it is seen through.
ItemKey = tuple[int, tuple[int, ...], bool, CropView]


class TrainCaptions(Dataset):
    """Items are an image's cached grid with some of its captions; `CaptionSampler` decides
    which captions. One grid serves all its captions, so the image side is computed once.
    A mirrored item reads the mirrored image's grid and swaps "left" and "right" in captions;
    an item cropped otherwise reads the grid of that crop."""

    def __init__(self, records: Sequence[CaptionRecord], cache: FeatureCache | None):
        self.records = list(records)
        self.cache = cache
        views = [(mirrored, view) for mirrored in (False, True) for view in CROP_VIEWS]
        self.keys = [{view: record_key(r, *view) for view in views} for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: ItemKey) -> tuple[torch.Tensor, list[str]]:
        image, captions, mirrored, view = key
        assert self.cache is not None  # only lengths can be read without one
        grid = torch.from_numpy(self.cache[self.keys[image][mirrored, view]].copy())
        texts = [self.records[image].captions[j] for j in captions]
        return grid, [mirror_caption(t) for t in texts] if mirrored else texts


class CaptionSampler(Sampler[ItemKey]):
    """Which captions an epoch trains on and in what order, as a pure function of (seed, epoch):
    so a resumed run sees exactly what an uninterrupted one would. "random" takes one caption
    per image each epoch, "all" every caption. With `mirror`, each image is seen mirrored in a
    random half of the epochs; with `corner_crops`, through a random one of `CROP_VIEWS` each
    epoch. Under DDP each rank takes its own equal share."""

    def __init__(
        self,
        dataset: TrainCaptions,
        captions_per_image: str,
        seed: int,
        mirror: bool = False,
        corner_crops: bool = False,
    ):
        if captions_per_image not in ("random", "all"):
            raise ValueError("captions_per_image must be 'random' or 'all'")
        self.counts = [len(r.captions) for r in dataset.records]
        self.every_caption = captions_per_image == "all"
        self.mirror = mirror
        self.corner_crops = corner_crops
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

    def __iter__(self) -> Iterator[ItemKey]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(len(self.counts), generator=generator).tolist()
        picks = (
            torch.rand(len(self.counts), generator=generator) * torch.tensor(self.counts)
        ).long()
        mirrored = (torch.rand(len(self.counts), generator=generator) < 0.5) & self.mirror
        # drawn last, so that the draws above are those of a run without corner crops
        views = torch.randint(len(CROP_VIEWS), (len(self.counts),), generator=generator)
        rank, world = self._rank_and_world()
        share = len(order) // world
        for image in order[rank * share : (rank + 1) * share]:
            captions = range(self.counts[image]) if self.every_caption else [int(picks[image])]
            view = CROP_VIEWS[int(views[image])] if self.corner_crops else CENTRE
            yield image, tuple(captions), bool(mirrored[image]), view


class LengthBucketBatches(Sampler[list[ItemKey]]):
    """Batches of captions of similar length, so little compute goes into padding (on
    Flickr8k the padded length falls from about twice the mean caption length to close to it).

    The sampler's shuffled order is cut into windows of `window` batches; each window is sorted
    by caption length (in words) and batched, and the batches are shuffled again, all as a pure
    function of the sampler's (seed, epoch). Lightning sets the epoch through `.sampler`.
    The first `skip` batches of the order are left out (a run resumed mid-epoch)."""

    def __init__(
        self, sampler: CaptionSampler, dataset: TrainCaptions, batch_size: int, window: int = 50
    ):
        self.sampler = sampler
        self.batch_size = batch_size
        self.window = window
        self.words = [[len(c.split()) for c in r.captions] for r in dataset.records]
        self.skip = 0

    def _length(self, key: ItemKey) -> int:
        image, captions, _, _ = key
        return max(self.words[image][j] for j in captions)

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.batch_size)

    def __iter__(self) -> Iterator[list[ItemKey]]:
        items = list(self.sampler)
        span = self.window * self.batch_size
        batches: list[list[ItemKey]] = []
        for start in range(0, len(items), span):
            window = sorted(items[start : start + span], key=self._length)
            batches += [
                window[i : i + self.batch_size] for i in range(0, len(window), self.batch_size)
            ]
        generator = torch.Generator().manual_seed(
            self.sampler.seed * 100_003 + self.sampler.epoch + 1
        )
        for index in torch.randperm(len(batches), generator=generator).tolist()[self.skip :]:
            yield batches[index]


class ResumableLoader(DataLoader):
    """The training DataLoader, resumable mid-epoch: its state (saved in every checkpoint) is
    how many batches of which epoch it has handed out, and a run resumed from it skips those
    batches of that epoch (`ExactResume` restores the state before the first batch).

    The loader draws its worker seeds from its own generator, not the global random state,
    which thus holds the model's randomness (dropout) alone."""

    def __init__(self, dataset: TrainCaptions, batch_sampler: LengthBucketBatches, **options: Any):
        super().__init__(
            dataset, batch_sampler=batch_sampler, generator=torch.Generator(), **options
        )
        self.epoch = self.handed_out = 0
        self._resume_at: dict[str, int] | None = None

    def __iter__(self) -> Iterator:  # type: ignore[override]  # a generator over DataLoader's iterator
        # A generator: this runs at the first batch, after Lightning has set the epoch.
        sampler = cast(LengthBucketBatches, self.batch_sampler)  # the one __init__ was given
        self.epoch = sampler.sampler.epoch
        resume, self._resume_at = self._resume_at, None
        sampler.skip = resume["batches"] if resume and resume["epoch"] == self.epoch else 0
        self.handed_out = sampler.skip
        for batch in super().__iter__():
            self.handed_out += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batches": self.handed_out}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume_at = dict(state)


class DevImages(Dataset):
    """One item per image with all its reference captions (for teacher-forced loss and metrics)."""

    def __init__(self, records: Sequence[CaptionRecord], cache: FeatureCache):
        self.records = list(records)
        self.cache = cache
        self.keys = [record_key(r) for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str, list[str]]:
        record = self.records[index]
        grid = torch.from_numpy(self.cache[self.keys[index]].copy())
        return grid, record.image_id, record.captions
