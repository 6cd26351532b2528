"""Batches of image grids with their tokenized captions, as training and evaluation feed them.

One grid serves all the captions of its image: `image_index` says which image each caption row
describes, so the decoder projects each image once however many captions it has.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from captioner.tokenizer import CaptionTokenizer


@dataclass
class Batch:
    features: torch.Tensor  # (images, image_tokens, dim) float32
    ids: torch.Tensor  # (captions, length): start, caption, end, then end-token padding
    lengths: torch.Tensor  # tokens in each caption, start and end included
    image_index: torch.Tensor  # (captions,): which image each caption describes
    captions: list[list[str]]  # the texts, per image (rewards in self-critical training)

    def to(self, device: torch.device) -> Batch:
        tensors = (self.features, self.ids, self.lengths, self.image_index)
        features, ids, lengths, image_index = (t.to(device) for t in tensors)
        return Batch(features, ids, lengths, image_index, self.captions)


class CaptionCollator:
    """Tokenizes in the DataLoader's collate step, so it runs in the loader workers."""

    def __init__(self, tokenizer: CaptionTokenizer, max_length: int):
        self.tokenizer = tokenizer
        self.max_length = max_length

    def tokenize(self, features: torch.Tensor, captions: Sequence[Sequence[str]]) -> Batch:
        """`captions[i]` are the captions of image i."""
        texts = [text for group in captions for text in group]
        image_index = torch.tensor([i for i, group in enumerate(captions) for _ in group])
        ids = torch.from_numpy(self.tokenizer.batch(texts, self.max_length))
        lengths = (ids != self.tokenizer.pad_id).sum(dim=1) + 1  # + the first end token
        return Batch(features.float(), ids, lengths, image_index, [list(g) for g in captions])

    def __call__(self, items: list[tuple[torch.Tensor, list[str]]]) -> Batch:
        return self.tokenize(
            torch.stack([grid for grid, _ in items]), [texts for _, texts in items]
        )

    def dev(
        self, items: list[tuple[torch.Tensor, str, list[str]]]
    ) -> tuple[torch.Tensor, list[str], list[list[str]]]:
        """Dev batches: the grids, image ids and reference lists."""
        features = torch.stack([grid for grid, _, _ in items]).float()
        return features, [image_id for _, image_id, _ in items], [refs for _, _, refs in items]
