"""Train/dev/test splits for caption sources that come without one (Kaggle files, tables
without a `split` column, JSONL rows without `split`).

Each image's split is fixed by a hash of its id (and the seed), so it never depends on the file
order or on which other images are present: adding photos to a folder moves none of the others.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

from captioner.config import check_int, check_number

log = logging.getLogger(__name__)

# "dev" (Flickr8k's name), "val" (Karpathy's) and "validation" (the hub's) are one split.
_SPLIT_ALIASES = {"dev": "val", "validation": "val"}


def same_split(a: str, b: str) -> bool:
    """Whether two split names mean the same split ("dev" and "val" do)."""
    return _SPLIT_ALIASES.get(a.lower(), a.lower()) == _SPLIT_ALIASES.get(b.lower(), b.lower())


@dataclass
class SplitConfig:
    """The shares of a split-less source's images that go to dev and to test (the rest trains),
    and the seed of the draw. A different seed draws other photos for dev and test."""

    dev_fraction: float = 0.05
    test_fraction: float = 0.05
    seed: int = 0  # 0 hashes the image id alone: the split captioner has always made

    def validate(self, prefix: str = "data_split.") -> SplitConfig:
        """ValueError naming the setting (`prefix` + field) for a share or seed out of range."""
        for name in ("dev_fraction", "test_fraction"):
            check_number(prefix + name, getattr(self, name), 0, 1)
        check_int(prefix + "seed", self.seed, 0, None)
        if self.dev_fraction + self.test_fraction >= 1:
            raise ValueError(
                f"{prefix}dev_fraction + {prefix}test_fraction must leave some photos to train, "
                f"got {self.dev_fraction} + {self.test_fraction}"
            )
        return self

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any]) -> SplitConfig:
        """The split a model was trained with, as its config's metadata records it (the default
        for models trained before it was recorded)."""
        saved = metadata.get("data_split")
        if saved is None:
            return cls()
        try:
            return cls(**saved).validate("the model's data_split.")
        except (TypeError, ValueError) as error:
            raise ValueError(f"the model's data_split is not a split setting: {error}") from None

    def split_of(self, image_id: str) -> str:
        return hash_split(image_id, self.dev_fraction, self.test_fraction, self.seed)


def hash_split(image_id: str, val: float = 0.05, test: float = 0.05, seed: int = 0) -> str:
    """The split ("train", "val" or "test") of an image, fixed by the SHA-1 of its id alone."""
    key = image_id if seed == 0 else f"{seed}:{image_id}"
    position = int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big") / 2**64
    return "test" if position < test else "val" if position < test + val else "train"


def log_hash_split(source: str, splits: list[str], config: SplitConfig) -> None:
    """One line saying how the photos of a split-less source were shared out, and how to change it.
    A warning, so the command line shows it: the dev and test photos are the user's to check."""
    counts = Counter(splits)
    log.warning(
        "%s has no train/dev/test split: by a hash of each image id, %d photos went to train, "
        "%d to dev and %d to test (dev_fraction %g, test_fraction %g, seed %d; set by training's "
        "--set data_split.dev_fraction=F, data_split.test_fraction=F, data_split.seed=N)",
        source,
        counts["train"],
        counts["val"],
        counts["test"],
        config.dev_fraction,
        config.test_fraction,
        config.seed,
    )
