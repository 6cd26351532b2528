import pytest
import torch

from captioner.config import DecoderConfig
from captioner.decoder import CaptionDecoder


def _decoder(image_layers: int) -> CaptionDecoder:
    torch.manual_seed(0)
    config = DecoderConfig(
        vocab_size=50, image_dim=24, image_tokens=9, d_model=32, n_heads=4, n_layers=3,
        image_layers=image_layers, dropout=0.0,
    )  # fmt: skip
    return CaptionDecoder(config).eval()


@pytest.fixture(params=[0, 2], ids=["grid", "image-layers"])
def decoder(request) -> CaptionDecoder:
    return _decoder(request.param)


def test_incremental_decoding_matches_full_recomputation(decoder):
    image = decoder.encode_image(torch.randn(2, 9, 24))
    ids = torch.randint(0, 50, (2, 7))
    full = decoder(ids, image).logits
    cache = decoder.new_cache()
    steps = [decoder(ids[:, t : t + 1], image, cache).logits for t in range(ids.shape[1])]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    # A multi-token chunk on top of a cache also lines up (mask offset by the cache length).
    cache = decoder.new_cache()
    head = decoder(ids[:, :3], image, cache).logits
    tail = decoder(ids[:, 3:], image, cache).logits
    torch.testing.assert_close(torch.cat([head, tail], dim=1), full, atol=1e-5, rtol=1e-5)


def test_causal_future_tokens_do_not_change_the_past(decoder):
    image = decoder.encode_image(torch.randn(1, 9, 24))
    ids = torch.randint(0, 50, (1, 6))
    changed = ids.clone()
    changed[0, 4:] = (changed[0, 4:] + 1) % 50
    torch.testing.assert_close(
        decoder(ids, image).logits[:, :4], decoder(changed, image).logits[:, :4]
    )


def test_cross_attention_weights_shape_and_rows_sum_to_one(decoder):
    image = decoder.encode_image(torch.randn(2, 9, 24))
    ids = torch.randint(0, 50, (2, 5))
    out = decoder(ids, image, need_weights=True)
    assert out.cross_attention.shape == (2, 3, 4, 5, 9)  # batch, layers, heads, tokens, image
    torch.testing.assert_close(out.cross_attention.sum(-1), torch.ones(2, 3, 4, 5))
    assert (out.cross_attention >= 0).all()
    # Asking for weights takes the explicit path; the logits must not change.
    torch.testing.assert_close(out.logits, decoder(ids, image).logits, atol=1e-5, rtol=1e-5)


def test_output_layer_is_tied_to_the_embedding(decoder):
    image = decoder.encode_image(torch.randn(1, 9, 24))
    hidden = {}
    decoder.final_norm.register_forward_hook(lambda m, i, out: hidden.setdefault("h", out))
    logits = decoder(torch.tensor([[1, 2, 3]]), image).logits
    torch.testing.assert_close(logits, hidden["h"] @ decoder.token_embedding.weight.T)
    vocab_layers = [m for m in decoder.modules() if getattr(m, "out_features", None) == 50]
    assert vocab_layers == []


def test_wrong_image_token_count_is_refused(decoder):
    with pytest.raises(ValueError, match="9 image tokens"):
        decoder.encode_image(torch.randn(1, 16, 24))


def test_too_long_sequences_are_refused(decoder):
    image = decoder.encode_image(torch.randn(1, 9, 24))
    with pytest.raises(ValueError, match="max_length"):
        decoder(torch.zeros(1, decoder.config.max_length + 1, dtype=torch.long), image)


def test_image_index_equals_repeating_the_image(decoder):
    features = torch.randn(2, 9, 24)
    ids = torch.randint(0, 50, (5, 6))
    index = torch.tensor([0, 0, 1, 1, 1])
    shared = decoder(ids, decoder.encode_image(features), image_index=index).logits
    repeated = decoder(ids, decoder.encode_image(features[index])).logits
    torch.testing.assert_close(shared, repeated, atol=1e-5, rtol=1e-5)


def test_image_layers_give_every_image_token_the_whole_photo():
    features = torch.randn(1, 9, 24)
    changed = features.clone()
    changed[0, 0] += 1.0  # one patch
    for image_layers, others_move in ((0, False), (1, True)):
        decoder = _decoder(image_layers)
        before, after = decoder.encode_image(features), decoder.encode_image(changed)
        assert not torch.allclose(before[0, 0], after[0, 0])
        assert torch.allclose(before[0, 1:], after[0, 1:]) is not others_move


def test_an_image_shared_by_its_consecutive_rows_equals_repeating_it(decoder):
    """Beam search hands each image once for its beams: logits and attention weights as with
    the image repeated per row, in one pass and step by step with the cache reordered."""
    image = decoder.encode_image(torch.randn(2, 9, 24))
    repeated = image.repeat_interleave(3, dim=0)
    ids = torch.randint(0, 50, (6, 5))
    shared = decoder(ids, image, need_weights=True)
    expected = decoder(ids, repeated, need_weights=True)
    torch.testing.assert_close(shared.logits, expected.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shared.cross_attention, expected.cross_attention)
    caches = decoder.new_cache(), decoder.new_cache()
    rows = torch.tensor([2, 2, 0, 4, 3, 3])  # each row inherits from a beam of its own image
    for t in range(ids.shape[1]):
        step = [decoder(ids[:, t : t + 1], m, c).logits for m, c in zip((image, repeated), caches)]
        torch.testing.assert_close(step[0], step[1], atol=1e-5, rtol=1e-5)
        caches[0].reorder(rows)
        caches[1].reorder(rows)
    # The second image leaves: its rows and its cross-attention rows go.
    caches[0].reorder(torch.tensor([0, 1, 2]), torch.tensor([0]))
    caches[1].reorder(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2]))
    last = ids[:3, -1:]
    torch.testing.assert_close(
        decoder(last, image[:1], caches[0]).logits,
        decoder(last, repeated[:3], caches[1]).logits,
        atol=1e-5,
        rtol=1e-5,
    )


def test_rows_that_cannot_share_the_images_are_refused(decoder):
    image = decoder.encode_image(torch.randn(2, 9, 24))
    with pytest.raises(ValueError, match="5 rows of tokens for 2 images"):
        decoder(torch.randint(0, 50, (5, 3)), image)
