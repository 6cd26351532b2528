"""The teacher-forced objective shared by training and evaluation."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from captioner.batch import Batch

if TYPE_CHECKING:
    from captioner.torch_model import CaptionModel


def token_loss_and_accuracy(
    logits: torch.Tensor, ids: torch.Tensor, lengths: torch.Tensor, label_smoothing: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean cross-entropy, correct and counted target tokens.

    `logits` come from feeding `ids[:, :-1]`, so position t predicts ids[:, t + 1]. Targets run up
    to and including the first end token (`lengths` counts start and end); the end-token padding
    after it is ignored.
    """
    targets = ids[:, 1:]
    positions = torch.arange(targets.shape[1], device=targets.device)
    valid = positions[None, :] < (lengths[:, None] - 1)
    loss = F.cross_entropy(logits[valid], targets[valid], label_smoothing=label_smoothing)
    correct = (logits.argmax(-1) == targets)[valid].sum()
    return loss, correct, valid.sum()


def teacher_forced(
    model: CaptionModel, batch: Batch, label_smoothing: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The model fed each reference caption: its loss, and its correct and counted next tokens."""
    logits = model(batch.features, batch.ids[:, :-1], batch.image_index)
    return token_loss_and_accuracy(logits, batch.ids, batch.lengths, label_smoothing)
