"""Decoding strategies over a batch of images: greedy, beam search and nucleus sampling.

All of them feed one new token per step through the decoder's key/value cache.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from captioner.config import GenerationConfig
from captioner.decoder import CaptionDecoder


@dataclass(frozen=True)
class SpecialTokens:
    start: int
    end: int
    # Ids the decoder must never produce (the start token, the compact vocabulary's "unknown").
    banned: tuple[int, ...]


@dataclass
class Hypothesis:
    ids: list[int]  # generated ids, end token excluded
    score: float  # sum of log-probabilities, length-normalised for beam search
    # With num_return_sequences K > 1, the image's other K - 1 captions: the next best beams in
    # order, or the other samples in the order drawn. Each image still gets one Hypothesis.
    alternatives: list[Hypothesis] = field(default_factory=list)


@torch.inference_mode()
def generate(
    decoder: CaptionDecoder,
    image: torch.Tensor,
    special: SpecialTokens,
    config: GenerationConfig,
) -> list[Hypothesis]:
    """One caption per row of `image` (the decoder memory from `encode_image`), with its
    alternatives when `config.num_return_sequences` > 1. ValueError for invalid settings; a
    max_new_tokens beyond the decoder's reach is cut to it here (a training config's validation
    length fits any decoder), while `Captioner.generation_config` refuses it from users."""
    config.validate()
    max_new = token_limit(decoder, config)
    with _bookkeeping_threads(decoder, image):
        if config.do_sample:
            samples = config.num_return_sequences
            image = image.repeat_interleave(samples, dim=0)
            drawn = _sample(decoder, image, special, config, max_new)
            return [
                _with_alternatives(drawn[i : i + samples]) for i in range(0, len(drawn), samples)
            ]
        if config.beam_size == 1:
            return _greedy(decoder, image, special, config, max_new)
        return _beam_search(decoder, image, special, config, max_new)


# Generations running with one PyTorch thread (see _bookkeeping_threads), and the thread count
# to restore when the last of them ends.
_one_thread_lock = threading.Lock()
_one_thread_users = 0
_threads_before = 1


@contextmanager
def _bookkeeping_threads(decoder, image: torch.Tensor) -> Iterator[None]:
    """One PyTorch thread while a decoder outside PyTorch (ONNX Runtime, on CPU) generates.

    PyTorch then only does each step's bookkeeping on (rows, vocab) tensors, which a batch makes
    large enough for OpenMP to split: waking the second thread, and its spinning after every op,
    takes the cores ONNX Runtime's threads and the loader processes need (a step's masking,
    log-softmax and argmax cost 8 ms instead of 0.3 ms on a busy 2-core machine). Counted, so
    that generations in several threads restore the count only when the last one ends."""
    global _one_thread_users, _threads_before
    if isinstance(decoder, torch.nn.Module) or image.device.type != "cpu":
        yield
        return
    with _one_thread_lock:
        if _one_thread_users == 0:
            _threads_before = torch.get_num_threads()
            torch.set_num_threads(1)
        _one_thread_users += 1
    try:
        yield
    finally:
        with _one_thread_lock:
            _one_thread_users -= 1
            if _one_thread_users == 0:
                torch.set_num_threads(_threads_before)


def max_new_tokens_limit(decoder: CaptionDecoder) -> int:
    """The most tokens this decoder can write after the start token."""
    return decoder.config.max_length - 1


def token_limit(decoder: CaptionDecoder, config: GenerationConfig) -> int:
    """The most tokens a caption may get: a caption this long was cut off, not ended."""
    return min(config.max_new_tokens, max_new_tokens_limit(decoder))


def _with_alternatives(ranked: list[Hypothesis]) -> Hypothesis:
    """The first hypothesis, carrying the others as its alternatives."""
    first, *others = ranked
    return Hypothesis(first.ids, first.score, others)


def _step_log_probs(
    decoder: CaptionDecoder,
    last: torch.Tensor,
    image: torch.Tensor,
    cache,
    special: SpecialTokens,
    history: list[list[int]],
    config: GenerationConfig,
    step: int,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Log-probabilities of the next token for each row, with banned tokens masked out."""
    logits = decoder(last[:, None], image, cache).logits[:, -1].float()
    if temperature != 1.0:
        logits = logits / temperature
    logits[:, list(special.banned)] = float("-inf")
    if step < config.min_new_tokens:  # every live row has `step` tokens so far
        logits[:, special.end] = float("-inf")
    for row, ids in enumerate(history):
        banned = _repeated_ngram_tokens(ids, config.no_repeat_ngram_size)
        if banned:
            logits[row, banned] = float("-inf")
    return logits.log_softmax(dim=-1)


def _repeated_ngram_tokens(ids: list[int], n: int) -> list[int]:
    """Tokens that would complete an n-gram already present in `ids`."""
    if n <= 0 or len(ids) < n:
        return []
    prefix = tuple(ids[len(ids) - n + 1 :])
    return [ids[i + n - 1] for i in range(len(ids) - n + 1) if tuple(ids[i : i + n - 1]) == prefix]


def _greedy(decoder, image, special, config, max_new) -> list[Hypothesis]:
    return _token_by_token(decoder, image, special, config, max_new, generator=None)


def _sample(decoder, image, special, config, max_new) -> list[Hypothesis]:
    generator = torch.Generator(device=image.device)
    if config.seed is not None:
        generator.manual_seed(config.seed)
    else:
        generator.seed()
    return _token_by_token(decoder, image, special, config, max_new, generator=generator)


def _token_by_token(decoder, image, special, config, max_new, generator) -> list[Hypothesis]:
    """Greedy (no generator) or nucleus sampling: one hypothesis per image. Ended captions leave
    the batch (see _worth_compacting), so the decoder mostly runs the captions still going. The
    bookkeeping per step is plain Python on the chosen tokens: a few rows' worth of tensor ops
    would cost more than the lists."""
    batch = image.shape[0]
    cache = decoder.new_cache()
    last = torch.full((batch,), special.start, dtype=torch.long, device=image.device)
    history: list[list[int]] = [[] for _ in range(batch)]
    scores = [0.0] * batch
    live = list(range(batch))  # the image of each row the decoder runs
    ended = [False] * batch  # rows whose caption ended, not yet dropped
    temperature = config.temperature if generator is not None else 1.0
    for step in range(max_new):
        live_history = [history[i] for i in live]
        log_probs = _step_log_probs(
            decoder, last, image, cache, special, live_history, config, step, temperature
        )
        if generator is None:
            chosen = log_probs.argmax(dim=-1)
        else:
            chosen = _nucleus(log_probs, config.top_p, generator)
        tokens = chosen.tolist()
        chosen_log_probs = log_probs.gather(1, chosen[:, None])[:, 0].tolist()
        for row, (ids, token, log_prob) in enumerate(zip(live_history, tokens, chosen_log_probs)):
            if ended[row]:
                tokens[row] = special.end
                continue
            scores[live[row]] += log_prob
            if token == special.end:
                ended[row] = True
            else:
                ids.append(token)
        dead = sum(ended)
        if dead == len(ended):
            break
        if _worth_compacting(dead, len(ended)):
            kept = [row for row, done in enumerate(ended) if not done]
            rows = torch.tensor(kept, device=image.device)
            cache.reorder(rows, rows)
            image = image[rows]
            live, tokens = [live[row] for row in kept], [tokens[row] for row in kept]
            ended = [False] * len(kept)
        last = torch.tensor(tokens, device=image.device)
    return [Hypothesis(ids, score) for ids, score in zip(history, scores)]


def _worth_compacting(dead_rows: int, rows: int) -> bool:
    """Whether to drop the rows of ended captions (or done images) from the batch now: once they
    are a quarter of it. Each drop copies the rows kept (their cache, and the image's keys and
    values, a megabyte a row for the bundled model), which costs more than running a few dead
    rows for some steps, but much less than running a quarter of the batch to the end."""
    return dead_rows > 0 and 4 * dead_rows >= rows


def _nucleus(log_probs: torch.Tensor, top_p: float, generator: torch.Generator) -> torch.Tensor:
    """Sample from the smallest set of tokens whose probability mass reaches `top_p`.

    One uniform draw per row against the cumulative distribution (inverse CDF): cheaper than
    `torch.multinomial`, and with top_p >= 1 no sort at all (self-critical training samples
    thousands of captions with the full distribution)."""
    probs = log_probs.exp()
    order = None
    if top_p < 1.0:
        probs, order = probs.sort(dim=-1, descending=True)
        mass_before = probs.cumsum(dim=-1) - probs
        probs[mass_before >= top_p] = 0.0
    cumulative = probs.cumsum(dim=-1)
    draw = torch.rand(
        (probs.shape[0], 1), generator=generator, device=probs.device, dtype=cumulative.dtype
    )
    # The first token whose cumulative mass exceeds the draw; tokens of zero mass never are.
    picked = torch.searchsorted(cumulative, draw * cumulative[:, -1:], right=True)
    picked = picked.clamp_(max=probs.shape[-1] - 1)
    return picked[:, 0] if order is None else order.gather(1, picked)[:, 0]


def _beam_search(decoder, image, special, config, max_new) -> list[Hypothesis]:
    """Batched beam search: every image keeps `beam_size` live hypotheses in one decoder call.

    Finished hypotheses are scored as sum(log p) / length ** length_penalty; an image is done once
    it has `beam_size` of them and no live hypothesis could still beat the worst. Each image's
    best `num_return_sequences` of them are returned (distinct token sequences). Done images
    leave the batch (see _worth_compacting), so the decoder mostly runs the images still
    searching. The decoder gets each image once for its `beam_size` consecutive rows.
    """
    batch, beams = image.shape[0], config.beam_size
    device = image.device
    cache = decoder.new_cache()
    last = torch.full((batch * beams,), special.start, dtype=torch.long, device=device)
    history: list[list[int]] = [[] for _ in range(batch * beams)]
    # Only the first beam of each image is live at the start, so the beams do not all repeat it.
    beam_scores = torch.full((batch, beams), float("-inf"), device=device)
    beam_scores[:, 0] = 0.0
    finished: list[list[Hypothesis]] = [[] for _ in range(batch)]
    done = [False] * batch
    searching = list(range(batch))  # the images whose beams the decoder runs, in row order

    def normalised(score: float, length: int) -> float:
        return score / max(length, 1) ** config.length_penalty

    for step in range(max_new):
        log_probs = _step_log_probs(decoder, last, image, cache, special, history, config, step)
        vocab = log_probs.shape[-1]
        images = len(searching)
        candidates = beam_scores[:, :, None] + log_probs.view(images, beams, vocab)
        top_scores, top_index = (t.tolist() for t in candidates.view(images, -1).topk(2 * beams))
        next_rows, next_tokens, next_scores = [], [], []
        for slot, b in enumerate(searching):
            kept = 0
            for score, index in zip(top_scores[slot], top_index[slot]):
                if done[b] or score == float("-inf") or kept == beams:
                    break
                row, token = slot * beams + index // vocab, index % vocab
                if token == special.end:  # `step` tokens plus the end token
                    finished[b].append(Hypothesis(list(history[row]), normalised(score, step + 1)))
                    continue
                next_rows.append(row)
                next_tokens.append(token)
                next_scores.append(score)
                kept += 1
            for _ in range(beams - kept):  # a done image: pad with dead rows
                next_rows.append(slot * beams)
                next_tokens.append(special.end)
                next_scores.append(float("-inf"))
            if not done[b] and len(finished[b]) >= beams:
                worst = sorted(h.score for h in finished[b])[-beams]
                # log-probs only fall, so a live beam is unlikely to end above this (as in HF)
                done[b] = normalised(max(next_scores[-beams:]), step + 2) <= worst
        going = [slot for slot, b in enumerate(searching) if not done[b]]
        if not going:
            break
        kept_images = None
        if _worth_compacting(images - len(going), images):
            kept_rows = [slot * beams + k for slot in going for k in range(beams)]
            next_rows, next_tokens, next_scores = (
                [values[i] for i in kept_rows] for values in (next_rows, next_tokens, next_scores)
            )
            searching = [searching[slot] for slot in going]
            kept_images = torch.tensor(going, device=device)
            image = image[kept_images]
        # A row only inherits from a beam of its own image: the image rows change only when
        # images leave.
        cache.reorder(torch.tensor(next_rows, device=device), kept_images)
        history = [history[row] + [token] for row, token in zip(next_rows, next_tokens)]
        beam_scores = torch.tensor(next_scores, device=device).view(len(searching), beams)
        last = torch.tensor(next_tokens, device=device)

    results = []
    for b in range(batch):
        pool = list(finished[b])
        if not done[b]:  # out of length: live beams compete with the finished ones
            slot = searching.index(b)
            for k in range(beams):
                score = float(beam_scores[slot, k])
                if score > float("-inf"):
                    pool.append(Hypothesis(history[slot * beams + k], normalised(score, max_new)))
        pool.sort(key=lambda h: h.score, reverse=True)
        results.append(_with_alternatives(pool[: config.num_return_sequences]))
    return results
