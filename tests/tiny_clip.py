"""A tiny randomly initialised CLIP (both towers) saved like a hub checkpoint: nothing downloaded.

Its text tower keeps CLIP's 49408-token vocabulary, so the project's own BPE ids index it.
"""

from __future__ import annotations

from pathlib import Path

import torch

TEXT = {
    "vocab_size": 49408,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "max_position_embeddings": 77,
    "projection_dim": 16,
}
VISION = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 32,
    "patch_size": 8,
    "projection_dim": 16,
}


def save_tiny_clip(directory: Path, seed: int = 0) -> Path:
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    config = CLIPConfig(text_config=TEXT, vision_config=VISION, projection_dim=16)
    CLIPModel(config).save_pretrained(directory)
    return directory
