"""Shared fixtures: tiny models built from real code paths, and real photos where available."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_model import build_tiny_model

from captioner import Captioner
from captioner.torch_model import CaptionModel

FLICKR8K = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "flickr8k"


@pytest.fixture(scope="session", autouse=True)
def onnx_cache_in_tmp(tmp_path_factory: pytest.TempPathFactory):
    """Exported ONNX decoders go to this session's temporary folder, not the user's cache, so
    the tests neither depend on nor fill ~/.cache (subprocesses inherit the variable)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CAPTIONER_CACHE_DIR", str(tmp_path_factory.mktemp("captioner-cache")))
        yield


def require_flickr8k() -> Path:
    """The Flickr8k slice. Its tests skip only where ../shared is absent (a checkout on its
    own); where ../shared is there, or under CI, missing data fails them: a run that skipped
    them would look green."""
    if not (FLICKR8K / "captions.jsonl").is_file():
        where = f"{FLICKR8K} has no captions.jsonl"
        if FLICKR8K.parents[1].is_dir() or os.environ.get("CI"):
            pytest.fail(f"{where}, though ../shared is here (or this is CI)", pytrace=False)
        pytest.skip(f"{where}: ../shared is absent")
    return FLICKR8K


@pytest.fixture(scope="session")
def flickr8k() -> Path:
    return require_flickr8k()


@pytest.fixture(scope="session")
def tiny_model() -> CaptionModel:
    return build_tiny_model()


@pytest.fixture(scope="session")
def tiny_captioner(tiny_model: CaptionModel) -> Captioner:
    """The tiny model as the server and collections run a saved model: its graphs, exported
    once into the (temporary) cache, in ONNX Runtime."""
    return tiny_model.captioner("onnx")


@pytest.fixture
def photo() -> Image.Image:
    """A synthetic but non-trivial RGB picture (gradients and a block)."""
    y, x = np.mgrid[0:120, 0:160]
    pixels = np.stack([x * 1.5, y * 2.0, (x + y) % 255], axis=-1).astype(np.uint8)
    pixels[30:70, 50:110] = (250, 40, 40)
    return Image.fromarray(pixels)
