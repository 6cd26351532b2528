"""The fast paths give what the plain ones give: folded batch norms and ONNX Runtime match the
network as published to 1e-4 (grids of ReLU6 activations, 0 to 6); captions are identical
whichever encoder path, batch size or beam-cache reorder produced them; large photos are resized
within 2 of 255 levels of the plain filter."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from PIL import Image

from captioner.config import GenerationConfig
from captioner.encoders.efficientnet import EfficientNetLiteEncoder
from captioner.transforms import Preprocess

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def published() -> EfficientNetLiteEncoder:
    return EfficientNetLiteEncoder("efficientnet-lite0", fold_norms=False, runtime="torch")


@pytest.fixture
def pixels(photo) -> torch.Tensor:
    preprocess = EfficientNetLiteEncoder("efficientnet-lite0", runtime="torch").preprocess
    flipped = photo.transpose(0)  # two different images: batches must not mix rows
    return torch.from_numpy(preprocess.batch([photo, flipped]))


def test_folded_batch_norms_match_the_published_network(published, pixels):
    folded = EfficientNetLiteEncoder("efficientnet-lite0", runtime="torch")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    expected = published(pixels).tokens
    assert torch.allclose(folded(pixels).tokens, expected, atol=TOLERANCE, rtol=0)


def test_onnx_runtime_matches_pytorch_at_any_batch_size(published, pixels):
    pytest.importorskip("onnxruntime")
    encoder = EfficientNetLiteEncoder("efficientnet-lite0", runtime="onnx")
    for batch in (pixels[:1], pixels, torch.cat([pixels, pixels[:1]])):  # chunks of 2
        grid = encoder(batch).tokens
        assert encoder._session is not None
        assert torch.allclose(grid, published(batch).tokens, atol=TOLERANCE, rtol=0)


def test_auto_runtime_falls_back_to_pytorch_without_onnx_runtime(monkeypatch, pixels, published):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails
    encoder = EfficientNetLiteEncoder("efficientnet-lite0")
    assert torch.allclose(encoder(pixels).tokens, published(pixels).tokens, atol=TOLERANCE, rtol=0)
    assert encoder.runtime == "torch"


def test_unknown_runtime_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown runtime"):
        EfficientNetLiteEncoder("efficientnet-lite0", runtime="tensorrt")


@pytest.mark.parametrize("num_beams", [1, 3])
def test_captions_are_identical_on_every_encoder_path(tiny_model, photo, num_beams):
    pytest.importorskip("onnxruntime")
    images = [photo, photo.transpose(0)]
    generation = {"num_beams": num_beams, "max_new_tokens": 8}
    encoder, captions = tiny_model.encoder, {}
    before = encoder.runtime, encoder._session
    try:
        for runtime in ("torch", "onnx"):
            encoder.runtime, encoder._session = runtime, None
            captions[runtime] = [c.token_ids for c in tiny_model.caption(images, **generation)]
    finally:
        encoder.runtime, encoder._session = before
    assert captions["onnx"] == captions["torch"]


def test_batched_greedy_equals_one_image_at_a_time(tiny_model):
    """Micro-batching must not change a caption: each row decodes as if alone."""
    torch.manual_seed(0)
    features = torch.randn(4, tiny_model.decoder.config.image_tokens, tiny_model.encoder.dim)
    generation = GenerationConfig(num_beams=1, max_new_tokens=10)
    batched = tiny_model.generate_from_features(features, generation)
    alone = [tiny_model.generate_from_features(row[None], generation)[0] for row in features]
    assert [c.token_ids for c in batched] == [c.token_ids for c in alone]
    for together, single in zip(batched, alone):
        assert together.score == pytest.approx(single.score, abs=1e-4)


class StepSpy:
    """A runtime that records, at every step, the rows of tokens and the image rows the
    ONNX step graph is given."""

    def __init__(self, runtime):
        self.runtime, self.max_length, self.calls = runtime, runtime.max_length, []

    def start(self, features, rows_per_image, attention=True):
        decoding = self.runtime.start(features, rows_per_image, attention)
        calls = self.calls

        class Steps:
            def step(self, tokens):
                calls.append((len(tokens), decoding.cross[0].shape[0]))
                return decoding.step(tokens)

            def keep(self, rows, images=None):
                decoding.keep(rows, images)

        return Steps()


def test_beam_search_hands_the_decoder_each_image_once_for_its_beams(tiny_captioner):
    """The image memory is never copied per beam: every step sees one image row per image
    still searching, and `num_beams` rows of tokens for each."""
    from captioner.decoding import generate

    features = np.random.default_rng(1).normal(size=(3, 49, 1280)).astype(np.float32)
    generation = GenerationConfig(num_beams=3, max_new_tokens=10)
    spy = StepSpy(tiny_captioner.runtime)
    hypotheses = generate(spy, features, tiny_captioner.special, generation)
    assert len(hypotheses) == 3 and spy.calls
    assert all(rows == 3 * images for rows, images in spy.calls), spy.calls


def test_large_photos_resize_fast_and_close_small_ones_exactly():
    """`reducing_gap` changes little above 3x the target size (under it, only the rounding of
    resampling the kept region alone, one level at most)."""
    rng = np.random.default_rng(0)
    for width, height, most in ((500, 375, 1), (4032, 3024, 2)):
        y, x = np.mgrid[0:height, 0:width]
        base = np.stack([x * 255 / width, y * 255 / height, (x + y) % 255], axis=-1)
        noisy = (base + rng.normal(0, 10, base.shape)).clip(0, 255).astype(np.uint8)
        image = Image.fromarray(noisy)
        preprocess = Preprocess(260, 260, (0.5,) * 3, (0.5,) * 3)
        fast = np.asarray(preprocess.resize_and_crop(image), dtype=np.int16)
        size = (round(width * 260 / height), 260)
        left = (size[0] - 260) // 2
        whole = image.resize(size, Image.Resampling.BICUBIC)
        plain = np.asarray(whole.crop((left, 0, left + 260, 260)), dtype=np.int16)
        assert np.abs(fast - plain).max() <= most


def test_large_jpegs_decode_at_reduced_scale_close_to_a_full_decode(tmp_path):
    """`min_size` decodes a large JPEG at a reduced scale; the encoder's pixels barely move."""
    from captioner.images import load_image

    height, width = 1800, 2400
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) % 255], axis=-1)
    noisy = (base + np.random.default_rng(0).normal(0, 10, base.shape)).clip(0, 255)
    path = tmp_path / "large.jpg"
    Image.fromarray(noisy.astype(np.uint8)).save(path, quality=90)
    full, reduced = load_image(path), load_image(path, min_size=260)
    assert full.size == (2400, 1800) and reduced.size == (600, 450)  # 1/4 (1/8 is under 260)
    preprocess = Preprocess(crop_size=260, resize_size=260, mean=(0.5,) * 3, std=(0.5,) * 3)
    difference = np.abs(preprocess(reduced) - preprocess(full)) * 127.5  # in 0..255 levels
    assert difference.mean() < 1.0 and difference.max() < 16  # the added noise is sigma 10
    assert load_image(path, min_size=1000).size == full.size  # 1/2 would be under 1000
    png = tmp_path / "small.png"
    full.resize((1200, 900)).save(png)
    assert load_image(png, min_size=260).size == (1200, 900)  # only JPEG decoders scale
