import dataclasses
import itertools
import math

import numpy as np
import pytest
import torch

from captioner.config import CaptionerConfig, DecoderConfig, GenerationConfig
from captioner.decoder import CaptionDecoder
from captioner.decoding import (
    SpecialTokens,
    best_first,
    generate,
    nucleus,
    repeated_ngram_tokens,
)
from captioner.runtime.torch import TorchDecoding

SPECIAL = SpecialTokens(start=1, end=0, banned=(1, 2))
VOCAB = 8


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(3)
    config = DecoderConfig(
        vocab_size=VOCAB,
        image_dim=6,
        image_tokens=4,
        d_model=16,
        n_heads=2,
        n_layers=2,
        dropout=0.0,
    )
    decoder = CaptionDecoder(config).eval()
    with torch.no_grad():  # make the end token reasonably likely so captions finish
        decoder.token_embedding.weight[0] *= 3
        image = decoder.encode_image(torch.randn(3, 4, 6))
    return decoder, image


class MemorySteps:
    """A runtime over a bare decoder whose "features" are already its image memory: the loop is
    checked against the decoder it drives, with no encoder in between."""

    def __init__(self, decoder: CaptionDecoder):
        self.decoder = decoder
        self.max_length = decoder.config.max_length
        self.started: list[int] = []  # the images of each start: the image stage's work

    def start(self, memory, rows_per_image: int, attention: bool = True) -> TorchDecoding:
        self.started.append(len(memory))
        return TorchDecoding(self.decoder, torch.as_tensor(memory), attention)


def run(decoder, image, config, return_attention=False):
    return generate(MemorySteps(decoder), image, SPECIAL, config, return_attention)


def sequence_log_prob(decoder, image_row, ids):
    """log p(ids + [end]) by full recomputation, under the same masking the search applies
    (banned tokens never, no end token first): the reference the search is checked against."""
    inputs = torch.tensor([[SPECIAL.start, *ids]])
    with torch.no_grad():
        logits = decoder(inputs, image_row[None]).logits[0]
    logits[:, list(SPECIAL.banned)] = float("-inf")
    logits[0, SPECIAL.end] = float("-inf")
    log_probs = logits.log_softmax(-1)
    targets = [*ids, SPECIAL.end]
    return sum(float(log_probs[t, tok]) for t, tok in enumerate(targets))


def test_greedy_picks_the_argmax_at_every_step(setup):
    decoder, image = setup
    config = GenerationConfig(num_beams=1, max_new_tokens=6, no_repeat_ngram_size=0)
    for row, hyp in enumerate(run(decoder, image, config)):
        prefix = [SPECIAL.start]
        for token in [*hyp.ids, SPECIAL.end][: config.max_new_tokens]:
            logits = decoder(torch.tensor([prefix]), image[row : row + 1]).logits[0, -1]
            logits[list(SPECIAL.banned)] = float("-inf")
            if len(prefix) == 1:
                logits[SPECIAL.end] = float("-inf")
            assert int(logits.argmax()) == token
            prefix.append(token)


def test_beam_search_with_full_width_is_exhaustive(setup):
    """With a beam as wide as the vocabulary and short captions, beam search must find the
    best-scoring caption among all sequences (checked by brute force)."""
    decoder, image = setup
    max_new = 3
    config = GenerationConfig(
        num_beams=VOCAB, max_new_tokens=max_new, no_repeat_ngram_size=0, length_penalty=0.0
    )
    results = run(decoder, image, config)
    allowed = [t for t in range(VOCAB) if t not in SPECIAL.banned and t != SPECIAL.end]
    for row, hyp in enumerate(results):
        best = max(
            sequence_log_prob(decoder, image[row], list(ids))
            for n in range(1, max_new)
            for ids in itertools.product(allowed, repeat=n)
        )
        assert hyp.score == pytest.approx(best, abs=1e-4)


def test_beam_scores_are_length_normalised_log_probs(setup):
    decoder, image = setup
    config = GenerationConfig(
        num_beams=3, max_new_tokens=8, no_repeat_ngram_size=0, length_penalty=1.0
    )
    for row, hyp in enumerate(run(decoder, image, config)):
        if len(hyp.ids) < config.max_new_tokens:  # finished with an end token
            expected = sequence_log_prob(decoder, image[row], hyp.ids) / (len(hyp.ids) + 1)
            assert hyp.score == pytest.approx(expected, abs=1e-4)


def test_beam_search_is_batched_consistently(setup):
    decoder, image = setup
    config = GenerationConfig(num_beams=3, max_new_tokens=8)
    together = run(decoder, image, config)
    alone = [run(decoder, image[i : i + 1], config)[0] for i in range(3)]
    assert [h.ids for h in together] == [h.ids for h in alone]


def test_beam_candidates_are_ranked_as_a_stable_sort_ranks_them():
    """Ties go to the lower index (the lower beam, then the lower token), dead beams (-inf)
    last, whatever the row holds."""
    rng = np.random.default_rng(0)
    rows = [
        rng.normal(size=(5, 300)),
        rng.integers(0, 4, size=(5, 300)).astype(float),  # ties everywhere, across the k-th
        np.where(rng.random((5, 300)) < 0.9, -np.inf, rng.normal(size=(5, 300))),
        np.full((2, 300), -np.inf),
    ]
    for values in rows:
        for k in (1, 6, 299, 300, 400):
            expected = np.argsort(-values, axis=-1, kind="stable")[:, :k]
            assert np.array_equal(best_first(values, k), expected)


def test_no_repeat_ngram():
    assert repeated_ngram_tokens([5, 6, 7, 5, 6], 3) == [7]
    assert repeated_ngram_tokens([5, 6, 7], 3) == []
    assert sorted(repeated_ngram_tokens([4, 4, 4], 2)) == [4, 4]


def test_no_repeat_ngram_holds_in_generated_captions(setup):
    decoder, image = setup
    for beam in (1, 3):
        config = GenerationConfig(num_beams=beam, max_new_tokens=15, no_repeat_ngram_size=2)
        for hyp in run(decoder, image, config):
            bigrams = list(zip(hyp.ids, hyp.ids[1:]))
            assert len(bigrams) == len(set(bigrams))


def test_banned_tokens_never_appear_and_length_is_bounded(setup):
    decoder, image = setup
    for config in (
        GenerationConfig(num_beams=1, max_new_tokens=5),
        GenerationConfig(num_beams=4, max_new_tokens=5),
        GenerationConfig(do_sample=True, top_p=0.95, temperature=1.5, max_new_tokens=5, seed=1),
    ):
        for hyp in run(decoder, image, config):
            assert 1 <= len(hyp.ids) <= 5
            assert not set(hyp.ids) & {0, 1, 2}


def test_sampling_is_seeded_and_top_p_zero_is_greedy(setup):
    decoder, image = setup
    sample = GenerationConfig(do_sample=True, top_p=0.9, max_new_tokens=6, seed=7)
    first = [h.ids for h in run(decoder, image, sample)]
    assert first == [h.ids for h in run(decoder, image, sample)]
    # top_p -> 0 keeps only the most likely token: sampling becomes greedy.
    nucleus = GenerationConfig(
        do_sample=True, top_p=1e-6, max_new_tokens=6, seed=0, no_repeat_ngram_size=0
    )
    greedy = GenerationConfig(num_beams=1, max_new_tokens=6, no_repeat_ngram_size=0)
    assert [h.ids for h in run(decoder, image, nucleus)] == [
        h.ids for h in run(decoder, image, greedy)
    ]


def test_sampling_draws_tokens_with_their_probabilities():
    probs = np.array([0.5, 0.0, 0.3, 0.15, 0.05])
    with np.errstate(divide="ignore"):
        log_probs = np.broadcast_to(np.log(probs), (20000, 5))
    rng = np.random.default_rng(0)
    for top_p, expected in (
        (1.0, probs),  # the whole distribution
        (0.7, np.array([0.5, 0.0, 0.3, 0.0, 0.0]) / 0.8),  # the nucleus, renormalised
    ):
        drawn = nucleus(log_probs, top_p, rng)
        frequency = np.bincount(drawn, minlength=5) / len(drawn)
        assert frequency[probs == 0].sum() == 0  # an impossible token never comes up
        np.testing.assert_allclose(frequency, expected, atol=0.015, rtol=0)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"num_beams": 0}, "num_beams must be an integer from 1 to 16, got 0"),
        ({"num_beams": -1}, "num_beams must be an integer from 1 to 16"),
        ({"num_beams": 17}, "num_beams must be an integer from 1 to 16"),
        ({"num_beams": 2.5}, "num_beams must be an integer"),
        ({"num_beams": True}, "num_beams must be an integer"),
        ({"max_new_tokens": 0}, "max_new_tokens must be an integer >= 1, got 0"),
        ({"max_new_tokens": -5}, "max_new_tokens must be an integer >= 1"),
        ({"min_new_tokens": 0}, "min_new_tokens must be an integer from 1 to 30"),
        (
            {"min_new_tokens": 31},
            r"min_new_tokens must be an integer from 1 to 30 \(max_new_tokens\)",
        ),
        ({"num_return_sequences": 4}, "num_return_sequences must be an integer from 1 to 3"),
        ({"num_return_sequences": 0}, "num_return_sequences must be an integer from 1 to 3"),
        ({"num_beams": 1, "num_return_sequences": 2}, "from 1 to 1 .*do_sample=True"),
        ({"do_sample": True, "num_return_sequences": 17}, "num_return_sequences .* 1 to 16"),
        ({"do_sample": "yes"}, "do_sample must be true or false"),
        ({"do_sample": True, "temperature": 0}, r"temperature must be a number >= 0.01 and <= 100"),
        ({"temperature": -1.0}, "temperature must be a number >= 0.01"),
        ({"temperature": float("nan")}, "temperature must be"),
        ({"temperature": 1e3}, "temperature must be .* <= 100"),
        ({"top_p": 0}, r"top_p must be a number > 0.0 and <= 1.0, got 0"),
        ({"top_p": 1.5}, "top_p must be a number > 0.0 and <= 1.0"),
        ({"no_repeat_ngram_size": -1}, "no_repeat_ngram_size must be an integer >= 0"),
        ({"length_penalty": float("inf")}, "length_penalty must be a number >= -10.0"),
        ({"length_penalty": 1e9}, r"length_penalty must be a number >= -10.0 and <= 10.0, got"),
        ({"seed": -1}, "seed must be an integer from 0"),
        ({"seed": "7"}, "seed must be an integer"),
    ],
)
def test_invalid_generation_settings_name_the_allowed_range(options, message):
    config = GenerationConfig(**options)
    with pytest.raises(ValueError, match=message):
        config.validate()


def test_valid_settings_pass_and_the_model_limit_bounds_the_length(setup):
    assert GenerationConfig().validate() == GenerationConfig()
    GenerationConfig(
        do_sample=True, num_return_sequences=16, temperature=0.01, top_p=1.0
    ).validate()
    GenerationConfig(num_beams=16, num_return_sequences=16, seed=2**64 - 1).validate()
    with pytest.raises(ValueError, match="max_new_tokens must be an integer from 1 to 39"):
        GenerationConfig(max_new_tokens=40).validate(max_new_tokens_limit=39)
    # generate() checks too; a length beyond the decoder's reach is cut to it.
    decoder, image = setup
    limit = decoder.config.max_length - 1
    config = GenerationConfig(
        num_beams=1, max_new_tokens=limit + 5, min_new_tokens=limit, no_repeat_ngram_size=0
    )
    assert all(len(h.ids) == limit for h in run(decoder, image, config))
    with pytest.raises(ValueError, match="temperature"):
        run(decoder, image, GenerationConfig(do_sample=True, temperature=0.0))


def test_replace_refuses_unknown_option_names():
    assert GenerationConfig().replace(num_beams=5).num_beams == 5
    with pytest.raises(ValueError, match="unknown generation option.*beam;.*known: num_beams"):
        GenerationConfig().replace(beam=5)


def test_saved_configs_read_an_old_option_name_as_the_new_one():
    from captioner.training.config import TrainConfig

    assert CaptionerConfig.from_dict({"generation": {"beam_size": 5}}).generation.num_beams == 5
    run = TrainConfig.from_dict({"validation_generation": {"beam_size": 2}})
    assert run.validation_generation.num_beams == 2
    with pytest.raises(ValueError, match="sets both beam_size and num_beams"):
        CaptionerConfig.from_dict({"generation": {"beam_size": 5, "num_beams": 5}})


def test_min_new_tokens_bans_the_end_token_until_then(setup):
    decoder, image = setup
    for options in ({"num_beams": 1}, {"num_beams": 4}, {"do_sample": True, "seed": 3}):
        short = GenerationConfig(max_new_tokens=8, no_repeat_ngram_size=0, **options)
        lengths = [len(h.ids) for h in run(decoder, image, short)]
        assert min(lengths) < 6  # the end token comes early without the minimum
        config = dataclasses.replace(short, min_new_tokens=6)
        for hyp in run(decoder, image, config):
            assert 6 <= len(hyp.ids) <= 8 and SPECIAL.end not in hyp.ids


def test_greedy_with_min_new_tokens_is_the_masked_argmax(setup):
    decoder, image = setup
    config = GenerationConfig(
        num_beams=1, max_new_tokens=6, min_new_tokens=4, no_repeat_ngram_size=0
    )
    for row, hyp in enumerate(run(decoder, image, config)):
        prefix = [SPECIAL.start]
        for token in [*hyp.ids, SPECIAL.end][: config.max_new_tokens]:
            logits = decoder(torch.tensor([prefix]), image[row : row + 1]).logits[0, -1]
            logits[list(SPECIAL.banned)] = float("-inf")
            if len(prefix) <= config.min_new_tokens:
                logits[SPECIAL.end] = float("-inf")
            assert int(logits.argmax()) == token
            prefix.append(token)


def test_beam_search_returns_the_best_beams_in_order(setup):
    decoder, image = setup
    one = GenerationConfig(num_beams=4, max_new_tokens=8, no_repeat_ngram_size=0)
    best = run(decoder, image, one)
    assert all(h.alternatives == [] for h in best)
    several = run(decoder, image, dataclasses.replace(one, num_return_sequences=3))
    for row, (single, hyp) in enumerate(zip(best, several)):
        ranked = [hyp, *hyp.alternatives]
        assert len(ranked) == 3
        assert hyp.ids == single.ids and hyp.score == single.score
        assert len({tuple(h.ids) for h in ranked}) == 3  # distinct captions
        assert [h.score for h in ranked] == sorted((h.score for h in ranked), reverse=True)
        for h in ranked:
            if len(h.ids) < one.max_new_tokens:  # ended, not cut off: its true score
                expected = sequence_log_prob(decoder, image[row], h.ids) / (len(h.ids) + 1)
                assert h.score == pytest.approx(expected, abs=1e-4)


def test_several_samples_per_image_are_seeded_draws(setup):
    """K samples per image are the draws of the batch with each image repeated K times (as
    self-critical training samples), so a seed reproduces them; but each image's memory is
    built once, not K times (the image stage may hold trained encoder blocks)."""
    decoder, image = setup
    config = GenerationConfig(do_sample=True, top_p=0.95, max_new_tokens=6, seed=11)
    steps = MemorySteps(decoder)
    several = generate(steps, image, SPECIAL, dataclasses.replace(config, num_return_sequences=4))
    assert steps.started == [image.shape[0]]
    assert len(several) == image.shape[0]
    drawn = [[h.ids for h in [s, *s.alternatives]] for s in several]
    repeated = run(decoder, image.repeat_interleave(4, dim=0), config)
    assert drawn == [[h.ids for h in repeated[i : i + 4]] for i in range(0, len(repeated), 4)]
    again = run(decoder, image, dataclasses.replace(config, num_return_sequences=4))
    assert drawn == [[h.ids for h in [s, *s.alternatives]] for s in again]
    assert len({tuple(ids) for ids in drawn[0]}) > 1  # samples, not one caption four times


def test_the_lowest_temperature_still_gives_finite_scores(setup):
    decoder, image = setup
    config = GenerationConfig(do_sample=True, temperature=0.01, top_p=1.0, max_new_tokens=6, seed=0)
    for hyp in run(decoder, image, config):
        assert math.isfinite(hyp.score) and hyp.ids


def test_attention_is_what_the_decoder_saw_for_each_token(setup):
    """The loop records each step's cross-attention; a teacher-forced pass over the caption
    (the decoder is causal) must see the same for every generated token."""
    decoder, image = setup
    for beam in (1, 3):
        config = GenerationConfig(num_beams=beam, max_new_tokens=6)
        for row, hyp in enumerate(run(decoder, image, config, return_attention=True)):
            ids = torch.tensor([[SPECIAL.start, *hyp.ids]])
            with torch.no_grad():
                output = decoder(ids, image[row : row + 1], need_weights=True)
            # (L, H, positions, T) -> one (L, H, T) per generated token
            expected = output.cross_attention[0].permute(2, 0, 1, 3)[: len(hyp.ids)].numpy()
            np.testing.assert_allclose(hyp.attention, expected, atol=1e-5)
