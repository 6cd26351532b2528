"""Scoring generated captions against human references."""

from captioner.evaluation.metrics import caption_metrics, ptb_tokenize

__all__ = ["caption_metrics", "ptb_tokenize"]
