"""CLIP's text tower as the decoder's token input (`decoder.token_embedding` "clip" and
"clip-contextual"): the rows and states it reads are CLIP's own (by original CLIP id under a
compact vocabulary), the cached step-by-step path equals the whole-sequence one, and both options
train, save, load and export to ONNX. A tiny random CLIP saved to a folder stands in for the hub."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_clip import save_tiny_clip
from training_data import make_colour_dataset, tiny_config
from transformers import CLIPTextModel

from captioner import Captioner, CaptionTokenizer, DecoderConfig
from captioner.decoder import CaptionDecoder
from captioner.torch_model import CaptionModel
from captioner.training.config import PRESETS, preset
from captioner.training.run import train

CAPTIONS = ["a dog runs across the grass .", "two children play in the water ."]
MODES = ["clip", "clip-contextual"]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="module")
def clip_text(clip_dir):
    return CLIPTextModel.from_pretrained(clip_dir).eval()


def build_decoder(clip_dir, mode: str, tokenizer: CaptionTokenizer) -> CaptionDecoder:
    torch.manual_seed(0)
    config = DecoderConfig(
        vocab_size=tokenizer.vocab_size,
        image_dim=16,
        image_tokens=4,
        d_model=32,
        n_heads=4,
        n_layers=2,
        max_length=16,
        dropout=0.0,
        token_embedding=mode,
        token_embedding_source=str(clip_dir),
    )
    decoder = CaptionDecoder(config)
    if tokenizer.vocab is not None:
        decoder.map_clip_ids(tokenizer.vocab)
    return decoder.eval()


def test_clip_reads_each_compact_tokens_row_by_its_clip_id(clip_dir, clip_text):
    tokenizer = CaptionTokenizer.build_compact(CAPTIONS)
    decoder = build_decoder(clip_dir, "clip", tokenizer)
    table = clip_text.get_input_embeddings().weight
    clip_ids = tokenizer.clip_ids(CAPTIONS[0])  # start, words, end: all in the vocabulary
    model_ids = torch.tensor([tokenizer.encode(CAPTIONS[0])])
    assert model_ids.max() < 30  # compact ids, far from the CLIP ids they stand for
    with torch.no_grad():
        got = decoder.embed_tokens(model_ids, 0)
        want = decoder.token_projection(table[clip_ids])
    torch.testing.assert_close(got[0], want)
    # "unknown" has no CLIP row: it reads the decoder's learned vector
    with torch.no_grad():
        decoder.unknown_token.fill_(0.5)
        unknown = decoder.embed_tokens(torch.tensor([[tokenizer.unknown_id]]), 0)
    torch.testing.assert_close(unknown[0, 0], decoder.token_projection(torch.full((32,), 0.5)))


def test_clip_contextual_reads_the_text_towers_states(clip_dir, clip_text):
    tokenizer = CaptionTokenizer.build_compact(CAPTIONS)
    decoder = build_decoder(clip_dir, "clip-contextual", tokenizer)
    model_ids = torch.tensor([tokenizer.encode(c) for c in CAPTIONS[:1]] * 2)
    model_ids[1, 3] = tokenizer.encode(CAPTIONS[1])[3]
    clip_ids = torch.tensor([[tokenizer.vocab[i] for i in row] for row in model_ids.tolist()])
    with torch.no_grad():
        states = clip_text(input_ids=clip_ids).last_hidden_state
        got = decoder.embed_tokens(model_ids, 0)
        torch.testing.assert_close(got, decoder.token_projection(states), atol=1e-5, rtol=1e-5)
        # a token changes the states after it only (causal), so a cache is exact
        assert torch.equal(got[0, :3], got[1, :3]) and not torch.allclose(got[0, 4:], got[1, 4:])


@pytest.mark.parametrize("mode", MODES)
def test_cached_steps_give_the_whole_sequences_logits(clip_dir, mode):
    tokenizer = CaptionTokenizer.build_compact(CAPTIONS)
    decoder = build_decoder(clip_dir, mode, tokenizer)
    ids = torch.tensor([tokenizer.encode(c)[:7] for c in CAPTIONS])
    memory = decoder.encode_image(torch.randn(2, 4, 16))
    with torch.no_grad():
        whole = decoder(ids, memory).logits
        cache = decoder.new_cache()
        steps = [decoder(ids[:, :3], memory, cache).logits]
        # beam search keeps and reorders rows: the text tower's cache must follow them
        cache.reorder(torch.tensor([1, 0]), image_rows=torch.tensor([1, 0]))
        swapped = ids.flip(0)
        steps += [decoder(swapped[:, t : t + 1], memory.flip(0), cache).logits for t in range(3, 7)]
    torch.testing.assert_close(steps[0], whole[:, :3], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat(steps[1:], 1), whole.flip(0)[:, 3:], atol=1e-5, rtol=1e-5)


def test_an_unmapped_compact_vocabulary_or_a_bad_setting_is_refused(clip_dir):
    tokenizer = CaptionTokenizer.build_compact(CAPTIONS)
    decoder = build_decoder(clip_dir, "clip", CaptionTokenizer())  # full vocabulary: identity
    assert torch.equal(decoder.clip_ids, torch.arange(49408))
    with pytest.raises(ValueError, match="2 CLIP ids for a decoder of 49408"):
        decoder.map_clip_ids([49407, 49406])
    config = dataclass_copy(decoder.config, vocab_size=tokenizer.vocab_size)
    unmapped = CaptionDecoder(config)
    with pytest.raises(ValueError, match="not mapped to CLIP ids"):
        unmapped(torch.tensor([[1, 5]]), unmapped.encode_image(torch.zeros(1, 4, 16)))
    with pytest.raises(ValueError, match="token_embedding must be one of learned, clip"):
        DecoderConfig(token_embedding="glove")
    with pytest.raises(ValueError, match="exceeds the 77 positions"):
        CaptionDecoder(dataclass_copy(config, token_embedding="clip-contextual", max_length=78))


def dataclass_copy(config, **changes):
    import dataclasses

    return dataclasses.replace(config, **changes)


@pytest.mark.parametrize("mode", MODES)
def test_clip_tokens_stay_frozen_while_the_projection_learns(clip_dir, mode):
    tokenizer = CaptionTokenizer.build_compact(CAPTIONS)
    decoder = build_decoder(clip_dir, mode, tokenizer).train()
    frozen = {name: t.clone() for name, t in decoder.clip_text.named_buffers()}
    projection = decoder.token_projection.weight.detach().clone()
    optimiser = torch.optim.AdamW(decoder.parameters(), lr=1e-2)
    ids = torch.tensor([tokenizer.encode(c)[:6] for c in CAPTIONS])
    logits = decoder(ids[:, :-1], decoder.encode_image(torch.randn(2, 4, 16))).logits
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten()).backward()
    optimiser.step()
    assert not any(p is t for p in decoder.parameters() for t in decoder.clip_text.buffers())
    for name, tensor in decoder.clip_text.named_buffers():
        assert torch.equal(tensor, frozen[name]), name
    assert not torch.equal(decoder.token_projection.weight, projection)


@pytest.mark.parametrize("mode", MODES)
def test_clip_token_input_trains_saves_loads_and_exports(clip_dir, tmp_path, mode):
    from captioner.onnx.export import (
        FILES,
        describe,
        export_decoder,
        kv_names,
        kv_shape,
        text_kv_shape,
    )
    from captioner.runtime.onnx import cpu_session

    dataset = make_colour_dataset(tmp_path / "colours")
    config = tiny_config(
        dataset,
        tmp_path,
        encoder={"name": "clip", "source": str(clip_dir)},
        decoder={"token_embedding": mode},  # its source: the encoder's folder
    )
    best = train(config, progress=False)
    saved = json.loads((best / "config.json").read_text())["decoder"]
    assert saved["token_embedding"] == mode and saved["token_embedding_source"] == str(clip_dir)
    model = CaptionModel.from_pretrained(best)
    tokenizer = model.tokenizer
    decoder = model.decoder
    # the mapping to CLIP ids is saved in the config; none of CLIP's own tensors is saved
    assert saved["clip_ids"] == tokenizer.vocab and decoder.clip_ids.tolist() == tokenizer.vocab
    assert not any(k.startswith("clip") for k in decoder.state_dict())
    # float16 weights on disk leave the mapping (ids up to 49407) as it was
    model.save_pretrained(tmp_path / "half", dtype=torch.float16)
    half = CaptionModel.from_pretrained(tmp_path / "half")
    assert half.decoder.clip_ids.tolist() == tokenizer.vocab

    photos = [Image.new("RGB", (40, 40), colour) for colour in [(30, 200, 40), (220, 30, 30)]]
    # The ONNX runtime decodes both as it decodes learned embeddings (clip-contextual feeding
    # the text tower's cache back each step): the float32 graphs give PyTorch's captions.
    onnx = Captioner.from_pretrained(best, runtime="onnx-fp32")
    captions = onnx.caption(photos, num_beams=2)
    assert onnx.runtime.name == "onnx-fp32"
    assert [c.token_ids for c in captions] == [
        c.token_ids for c in model.caption(photos, num_beams=2)
    ]
    export_decoder(decoder, tmp_path / "onnx", ["fp32"])
    image = cpu_session(tmp_path / "onnx" / FILES["fp32"]["image"], 1)
    step = cpu_session(tmp_path / "onnx" / FILES["fp32"]["step"], 1)
    layers = decoder.config.n_layers
    text_layers = decoder.clip_text.n_layers
    assert text_layers == (2 if mode == "clip-contextual" else 0)
    features = torch.randn(2, decoder.config.image_tokens, decoder.config.image_dim)
    ids = torch.tensor([tokenizer.encode(c)[:5] for c in ["a red square", "green all over"]])
    with torch.no_grad():
        expected = decoder(ids, decoder.encode_image(features)).logits
    cross = image.run(kv_names("cross", layers), {"features": features.numpy()})
    past = [np.zeros(kv_shape(decoder.config, 2, 0), np.float32)] * (2 * layers)
    text_past = [np.zeros(text_kv_shape(decoder, 2, 0), np.float32)] * (2 * text_layers)
    for position in range(ids.shape[1]):
        logits, *presents, _ = step.run(
            None,
            {
                "ids": ids[:, position : position + 1].numpy(),
                **dict(zip(kv_names("past", layers), past)),
                **dict(zip(kv_names("cross", layers), cross)),
                **dict(zip(kv_names("text_past", text_layers), text_past)),
            },
        )
        past, text_past = presents[: 2 * layers], presents[2 * layers :]
        np.testing.assert_allclose(logits, expected[:, position].numpy(), atol=1e-4)
    description = describe(model, ["fp32"])["decoder"]
    assert description["token_embedding"] == mode
    assert description.get("text_layers", 0) == text_layers


def test_a_token_source_that_cannot_be_loaded_is_a_setup_error(tmp_path):
    from captioner.training.run import TrainingSetupError

    dataset = make_colour_dataset(tmp_path / "colours")
    missing = tmp_path / "no-clip-here"
    config = tiny_config(
        dataset,
        tmp_path,
        decoder={"token_embedding": "clip", "token_embedding_source": str(missing)},
    )
    with pytest.raises(TrainingSetupError, match="cannot build the model"):
        train(config, progress=False)
    assert not (tmp_path / "run" / "best").exists()


def test_the_original_set_up_preset():
    config = preset("flickr30k-clip-original")
    assert config.encoder.name == "clip" and config.encoder.source == "openai/clip-vit-base-patch32"
    decoder = config.decoder
    assert (decoder.d_model, decoder.n_heads, decoder.n_layers) == (512, 8, 6)
    assert decoder.token_embedding == "clip"
    assert config.captions_per_image == "random" and config.min_token_count == 0
    assert "flickr30k-clip-original" in PRESETS


def test_the_clip_vision_tower_exports_to_onnx(clip_dir):
    import io

    from captioner.config import EncoderConfig
    from captioner.encoders import build_encoder
    from captioner.encoders.clip import CLIPEncoder
    from captioner.runtime.onnx import cpu_session

    encoder = build_encoder(EncoderConfig("clip", str(clip_dir)))
    assert isinstance(encoder, CLIPEncoder)
    buffer = io.BytesIO()
    encoder.export_onnx(buffer)
    session = cpu_session(buffer.getvalue(), 1)
    pixels = torch.randn(3, 3, 32, 32)  # any batch
    (got,) = session.run(["features"], {"pixels": pixels.numpy()})
    np.testing.assert_allclose(got, encoder(pixels).tokens.numpy(), atol=1e-4)
    assert got.shape == (3, 16, 32)
