"""Self-critical sequence training (Rennie et al., 2017): fine-tune a trained captioner on CIDEr-D.

Cross-entropy teaches the next word; SCST rewards whole sampled captions by the metric itself.
Each image gets k sampled captions (from the nucleus `scst_top_p`); a caption's advantage is its
CIDEr-D minus the mean of the other k - 1 (the baseline of Luo, 2020), and the loss is
-advantage * log p(caption). Optionally the references' cross-entropy is mixed in (Paulus et
al., 2018): it anchors the policy to human captions, where pure self-critical updates drift and,
run long enough, collapse.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import cast

import numpy as np
import torch

from captioner.batch import Batch
from captioner.config import GenerationConfig
from captioner.decoding import Hypothesis, generate, max_new_tokens_limit
from captioner.evaluation.metrics import ptb_tokenize
from captioner.objective import teacher_forced
from captioner.runtime.torch import TorchRuntime
from captioner.torch_model import CaptionModel
from captioner.training.config import TrainConfig
from captioner.training.module import CaptionerModule


def _ngrams(words: list[str], n: int) -> Counter:
    return Counter(
        tuple(words[i : i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1)
    )


# The word `CiderD(end_word=True)` appends to every caption that ended; no PTB token has angle
# brackets, so it matches nothing but itself.
END_WORD = "<eos>"


class CiderD:
    """CIDEr-D as coco-caption computes it (n-grams 1..4, sigma 6, clipped, x10), but with
    document frequencies fixed from a reference corpus: scoring a training batch alone would
    make every n-gram look rare.

    `end_word`: the end of a caption counts as a word (`END_WORD`), as in the self-critical
    paper's own training code, so that a caption is also rewarded for ending where references
    end ("... on the beach <eos>") rather than trailing off ("... on the <eos>")."""

    def __init__(
        self,
        corpus: Iterable[Sequence[str]],
        n: int = 4,
        sigma: float = 6.0,
        end_word: bool = False,
    ):
        self.n = n
        self.sigma = sigma
        self.end_word = end_word
        self.document_frequency: Counter = Counter()
        images = 0
        for references in corpus:
            images += 1
            seen = set()
            for reference in references:
                seen |= set(_ngrams(self._words(reference), n))
            self.document_frequency.update(seen)
        self.log_images = math.log(max(images, 1))

    def _words(self, text: str, ended: bool = True) -> list[str]:
        words = ptb_tokenize(text).split()
        return [*words, END_WORD] if self.end_word and ended else words

    def _vector(self, text: str, ended: bool = True) -> tuple[list[dict], list[float], int]:
        counts = _ngrams(self._words(text, ended), self.n)
        vector: list[dict] = [{} for _ in range(self.n)]
        norms = [0.0] * self.n
        length = 0
        for gram, frequency in counts.items():
            order = len(gram) - 1
            idf = self.log_images - math.log(max(1.0, self.document_frequency[gram]))
            vector[order][gram] = frequency * idf
            norms[order] += (frequency * idf) ** 2
            if order == 1:  # coco-caption measures length in bigrams
                length += frequency
        return vector, [math.sqrt(v) for v in norms], length

    def scores(
        self,
        candidates: Sequence[str],
        references: Sequence[str],
        ended: Sequence[bool] | None = None,
    ) -> list[float]:
        """Each candidate against the same references, which are vectorised once. `ended`:
        whether each candidate ended (drew the end token) rather than was cut off; all did
        when not given."""
        refs = [self._vector(reference) for reference in references]
        ended = [True] * len(candidates) if ended is None else ended
        return [
            self._against(self._vector(candidate, end), refs)
            for candidate, end in zip(candidates, ended, strict=True)
        ]

    def _against(self, hypothesis: tuple, references: list[tuple]) -> float:
        hyp, hyp_norms, hyp_length = hypothesis
        total = 0.0
        for ref, ref_norms, ref_length in references:
            penalty = math.exp(-((hyp_length - ref_length) ** 2) / (2 * self.sigma**2))
            for order in range(self.n):
                overlap = sum(
                    min(value, ref[order].get(gram, 0.0)) * ref[order].get(gram, 0.0)
                    for gram, value in hyp[order].items()
                )
                if hyp_norms[order] and ref_norms[order]:
                    overlap /= hyp_norms[order] * ref_norms[order]
                total += overlap * penalty / self.n
        return 10.0 * total / len(references)


def sampled_log_probs(
    model: CaptionModel,
    features: torch.Tensor,
    image_index: torch.Tensor,
    hypotheses: Sequence[Hypothesis],
    limit: int,
) -> torch.Tensor:
    """Each sampled caption's summed log-probability, with gradients. A caption cut off at
    `limit` tokens never drew the end token, so only the ones that ended score it."""
    tokenizer = model.tokenizer
    rows = [
        [tokenizer.start_id, *h.ids, *([tokenizer.end_id] if len(h.ids) < limit else [])]
        for h in hypotheses
    ]
    ids = torch.full((len(rows), max(map(len, rows))), tokenizer.end_id, device=features.device)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
    logits = model(features, ids[:, :-1], image_index).float()
    token_log_probs = logits.log_softmax(-1).gather(2, ids[:, 1:, None])[:, :, 0]
    lengths = torch.tensor([len(row) - 1 for row in rows], device=features.device)
    valid = torch.arange(ids.shape[1] - 1, device=features.device)[None, :] < lengths[:, None]
    return (token_log_probs * valid).sum(dim=1)


class SelfCriticalModule(CaptionerModule):
    def __init__(self, model: CaptionModel, config: TrainConfig, corpus: Iterable[Sequence[str]]):
        super().__init__(model, config)
        self.cider = CiderD(corpus, end_word=config.scst_reward_end_word)
        self.sampling = GenerationConfig(
            do_sample=True, top_p=config.scst_top_p, temperature=1.0, no_repeat_ngram_size=0,
            num_return_sequences=config.scst_samples,
            max_new_tokens=min(
                config.validation_generation.max_new_tokens, max_new_tokens_limit(model.config.decoder.max_length)
            ),
        )  # fmt: skip

    def _sampling_at(self, step: int) -> GenerationConfig:
        """Samples are a function of (seed, step, rank): reruns and resumed runs draw the same."""
        seed = (self.config.seed * 1_000_003 + step) * 1024 + self.global_rank
        return dataclasses.replace(self.sampling, seed=seed)

    def training_step(self, batch: Batch, batch_index: int) -> torch.Tensor:
        samples = self.config.scst_samples
        images = batch.features.shape[0]
        # Dropout stays off for the whole step: the policy gradient needs the log-probabilities of
        # the very policy that drew the samples, not of a randomly thinned copy of it. Sampling
        # runs in full precision: many tiny steps, where bf16 only costs time on CPU.
        self.model.eval()
        with torch.no_grad(), torch.autocast(self.device.type, enabled=False):
            drawn = generate(
                TorchRuntime(self.model),
                cast(np.ndarray, batch.features),  # TorchRuntime takes tensors as they are
                self.model.special,
                self._sampling_at(self.global_step),
            )  # the image stage (trained encoder blocks too) runs once per image, not per sample
        hypotheses = [h for first in drawn for h in (first, *first.alternatives)]
        texts = [self.model.tokenizer.decode(h.ids) for h in hypotheses]
        limit = self.sampling.max_new_tokens  # within the decoder's reach (see __init__)
        ended = [len(h.ids) < limit for h in hypotheses]  # the others were cut off at the limit
        rewards = torch.tensor(
            [
                self.cider.scores(
                    texts[i * samples : (i + 1) * samples],
                    references,
                    ended[i * samples : (i + 1) * samples],
                )
                for i, references in enumerate(batch.captions)
            ]
        )
        baseline = (rewards.sum(dim=1, keepdim=True) - rewards) / (samples - 1)
        advantage = (rewards - baseline).view(-1).to(self.device)

        image_index = torch.arange(images, device=self.device).repeat_interleave(samples)
        log_prob = sampled_log_probs(self.model, batch.features, image_index, hypotheses, limit)
        loss = -(advantage * log_prob).mean()
        if self.config.scst_xe_weight:
            # No label smoothing here: its pull towards uniform is the drift this term holds back.
            cross_entropy, _, _ = teacher_forced(self.model, batch)
            loss = loss + self.config.scst_xe_weight * cross_entropy
        self.log("train/reward", rewards.mean(), prog_bar=True, batch_size=len(texts))
        self.log("train/loss", loss, prog_bar=True, batch_size=len(texts))
        return loss
