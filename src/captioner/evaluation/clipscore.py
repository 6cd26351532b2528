"""CLIPScore and RefCLIPScore (Hessel et al., EMNLP 2021): how well a caption fits its image by
CLIP's embeddings, with no reference (CLIP-S), and together with the references (RefCLIP-S).

Per image, with c, v and r the unit CLIP embeddings of the caption, the image and each reference:
CLIP-S = 2.5 * max(cos(c, v), 0); RefCLIP-S = the harmonic mean of CLIP-S and
max(max_r cos(c, r), 0). The corpus figures are their means over the images. As in the paper,
captions and references are read as "A photo depicts <caption>".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from captioner.images import ImageInput

CLIP_SCORE_WEIGHT = 2.5  # the paper's w: stretches CLIP-S over roughly [0, 1]
PROMPT = "A photo depicts"


@dataclass
class CLIPScores:
    clip_score: float  # corpus CLIP-S: the mean over images
    refclip_score: float | None  # corpus RefCLIP-S; None without references
    per_image: list[float]  # CLIP-S of each image's caption, in order
    per_image_ref: list[float] | None


def clip_s(image: torch.Tensor, caption: torch.Tensor) -> torch.Tensor:
    """CLIP-S of each row pair of unit embeddings (n, dim), (n, dim)."""
    return CLIP_SCORE_WEIGHT * (image * caption).sum(-1).clamp(min=0)


def harmonic_mean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Elementwise; 0 where both are 0."""
    total = a + b
    return torch.where(total > 0, 2 * a * b / total.clamp(min=1e-12), torch.zeros_like(total))


class CLIPScorer:
    """CLIP (a Hugging Face hub id or folder) in PyTorch, scoring captions of images."""

    def __init__(
        self,
        source: str,
        device: str | torch.device = "cpu",
        batch_size: int = 64,
        prompt: str = PROMPT,
    ):
        from transformers import CLIPModel

        from captioner.encoders.clip import clip_preprocess, quiet_loading
        from captioner.tokenizer import CaptionTokenizer

        with quiet_loading():
            self.model = CLIPModel.from_pretrained(source).eval().to(device)
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.source = source
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.prompt = prompt
        self.tokenizer = CaptionTokenizer()  # OpenAI's BPE: CLIP's own ids
        self.max_tokens = self.model.config.text_config.max_position_embeddings
        self.preprocess = clip_preprocess(self.model.config.vision_config.image_size)

    @torch.inference_mode()
    def image_embeddings(self, images: Sequence[ImageInput]) -> torch.Tensor:
        """(n, dim) unit embeddings; ImageLoadError for an input that is not an image."""
        out = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            pixels = torch.from_numpy(self.preprocess.batch(chunk)).to(self.device)
            pooled = self.model.vision_model(pixel_values=pixels).pooler_output
            out.append(self.model.visual_projection(pooled))
        return _unit(torch.cat(out)) if out else torch.zeros(0, self.model.config.projection_dim)

    def text_ids(self, text: str) -> list[int]:
        """CLIP ids of the prompted text, cut to the text tower's positions (keeping the end
        token, whose state CLIP pools)."""
        prompted = f"{self.prompt} {text}" if self.prompt else text
        ids = self.tokenizer.clip_ids(prompted)
        return ids if len(ids) <= self.max_tokens else ids[: self.max_tokens - 1] + ids[-1:]

    @torch.inference_mode()
    def text_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        """(n, dim) unit embeddings of `texts`."""
        out = []
        end = self.tokenizer.end_id
        for start in range(0, len(texts), self.batch_size):
            rows = [self.text_ids(t) for t in texts[start : start + self.batch_size]]
            length = max(map(len, rows))
            ids = torch.full((len(rows), length), end, dtype=torch.long)
            mask = torch.zeros((len(rows), length), dtype=torch.long)
            for i, row in enumerate(rows):
                ids[i, : len(row)] = torch.tensor(row)
                mask[i, : len(row)] = 1
            text = self.model.text_model(
                input_ids=ids.to(self.device), attention_mask=mask.to(self.device)
            )
            out.append(self.model.text_projection(text.pooler_output))
        return _unit(torch.cat(out)) if out else torch.zeros(0, self.model.config.projection_dim)

    def score(
        self,
        images: Sequence[ImageInput],
        captions: Sequence[str],
        references: Sequence[Sequence[str]] | None = None,
    ) -> CLIPScores:
        """CLIP-S (and with `references`, one list per image, RefCLIP-S) of caption i for image
        i; ValueError when the lengths differ or there is nothing to score."""
        if not captions or len(images) != len(captions):
            raise ValueError(f"{len(images)} images for {len(captions)} captions")
        if references is not None and len(references) != len(captions):
            raise ValueError(f"{len(references)} reference lists for {len(captions)} captions")
        caption_vectors = self.text_embeddings(captions)
        per_image = clip_s(self.image_embeddings(images), caption_vectors).cpu()
        if references is None:
            return CLIPScores(per_image.mean().item(), None, per_image.tolist(), None)
        if any(not refs for refs in references):
            raise ValueError("every image needs at least one reference caption")
        flat = [text for refs in references for text in refs]
        reference_vectors = self.text_embeddings(flat)
        best = []
        start = 0
        for i, refs in enumerate(references):
            cosines = reference_vectors[start : start + len(refs)] @ caption_vectors[i]
            best.append(cosines.max().clamp(min=0))
            start += len(refs)
        per_image_ref = harmonic_mean(per_image, torch.stack(best).cpu())
        return CLIPScores(
            per_image.mean().item(),
            per_image_ref.mean().item(),
            per_image.tolist(),
            per_image_ref.tolist(),
        )

    def rerank(
        self, images: Sequence[ImageInput], candidates: Sequence[Sequence[str]]
    ) -> list[int]:
        """For each image, the index of its candidate caption with the highest CLIP-S; a tie
        (every candidate clamped to 0, say) keeps the earliest: the captioner's own order."""
        if len(images) != len(candidates) or any(not c for c in candidates):
            raise ValueError("every image needs at least one candidate caption")
        image_vectors = self.image_embeddings(images)
        caption_vectors = self.text_embeddings([c for group in candidates for c in group])
        chosen, start = [], 0
        for image, group in zip(image_vectors, candidates):
            scores = clip_s(
                image.expand(len(group), -1), caption_vectors[start : start + len(group)]
            )
            chosen.append(int(scores.argmax()))  # the first of equal maxima
            start += len(group)
        return chosen


def _unit(vectors: torch.Tensor) -> torch.Tensor:
    return (vectors / vectors.norm(dim=-1, keepdim=True)).float()
