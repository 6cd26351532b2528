"""The default model that ships inside the package: loads offline and describes real photos."""

import pytest

import captioner
from captioner import Captioner
from captioner.hub import BUNDLED_DIR

DOG_PHOTOS = ["1032122270_ea6f0beedb", "1130369873_d80a1aa59c", "1164131282_b30926f332"]


@pytest.fixture(scope="module")
def bundled() -> Captioner:
    return Captioner.from_pretrained()


def test_bundled_model_is_small_and_recorded(bundled):
    size = sum(p.stat().st_size for p in BUNDLED_DIR.iterdir())
    assert size <= 30_000_000
    assert bundled.config.encoder.name == "efficientnet-lite2"
    assert bundled.config.metadata["dev_metrics"]["cider"] > 0.4


def test_bundled_model_sees_dogs(bundled, flickr8k):
    """Every reference of these dev photos mentions dogs; so must the model."""
    paths = [flickr8k / "images" / f"{name}.jpg" for name in DOG_PHOTOS]
    for result in captioner.caption(paths, beam_size=3):
        assert "dog" in result.text, result.text
