"""Where captioner keeps what it can always rebuild: exported graphs and encoder features."""

from __future__ import annotations

import os
from pathlib import Path

# Processes decoding images while the encoder runs, when caching features.
ENCODE_WORKERS = 1
# How a command's --help names the default feature cache (computed per call: the variables
# may change after import, as they do under the tests).
FEATURES_DIR_HELP = (
    "default: $CAPTIONER_CACHE_DIR/features, else $XDG_CACHE_HOME/captioner/features, "
    "else ~/.cache/captioner/features"
)


def cache_root() -> Path:
    """$CAPTIONER_CACHE_DIR, else $XDG_CACHE_HOME/captioner, else ~/.cache/captioner."""
    if os.environ.get("CAPTIONER_CACHE_DIR"):
        return Path(os.environ["CAPTIONER_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "captioner"


def features_dir(cache_dir: str | Path | None = None) -> Path:
    """Where the encoder grids are kept: `cache_dir` if given, else the user's cache folder, so
    that `train` and `eval` share one cache wherever they are run from."""
    return Path(cache_dir).expanduser() if cache_dir is not None else cache_root() / "features"
