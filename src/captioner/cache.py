"""Where captioner keeps what it can always rebuild: exported graphs and encoder features."""

from __future__ import annotations

import os
from pathlib import Path

# Where `captioner features`, `train` and `eval` keep the encoder grids by default.
FEATURES_DIR = "cache"
# Processes decoding images while the encoder runs, when caching features.
ENCODE_WORKERS = 1


def cache_root() -> Path:
    """$CAPTIONER_CACHE_DIR, else $XDG_CACHE_HOME/captioner, else ~/.cache/captioner."""
    if os.environ.get("CAPTIONER_CACHE_DIR"):
        return Path(os.environ["CAPTIONER_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "captioner"
