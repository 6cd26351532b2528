"""Greedy decoding, batched beam search and nucleus sampling over any runtime's steps, in numpy.

One loop for every runtime (ONNX Runtime for inference, PyTorch in training); the page's
`generation.ts` mirrors it. Each step feeds one token per row and reads back the logits and the
cross-attention behind them, so attention maps come with the captions at no extra pass.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from captioner.config import GenerationConfig
from captioner.runtime.base import Decoding, Runtime


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
    # (tokens, layers, heads, image tokens): the cross-attention behind each id, when asked for
    attention: np.ndarray | None = None
    # With num_return_sequences K > 1, the image's other K - 1 captions: the next best beams in
    # order, or the other samples in the order drawn. Each image still gets one Hypothesis.
    alternatives: list[Hypothesis] = field(default_factory=list)


def max_new_tokens_limit(max_length: int) -> int:
    """The most tokens a decoder of `max_length` positions can write after the start token."""
    return max_length - 1


def generate(
    runtime: Runtime,
    features: np.ndarray,
    special: SpecialTokens,
    config: GenerationConfig,
    return_attention: bool = False,
) -> list[Hypothesis]:
    """One caption per image of `features` (the encoder's tokens), with its alternatives when
    `config.num_return_sequences` > 1. ValueError for invalid settings; a max_new_tokens beyond
    the decoder's reach is cut to it (a training config's validation length fits any decoder)."""
    config.validate()
    max_new = min(config.max_new_tokens, max_new_tokens_limit(runtime.max_length))
    images = features.shape[0]
    if config.do_sample:
        samples = config.num_return_sequences
        loop = _TokenByToken(special, config, max_new, return_attention, config.seed)
        decoding = runtime.start(features, 1, return_attention)  # the image stage once an image
        if samples > 1:  # then each sample its own image row: ended ones leave as greedy rows do
            rows = np.repeat(np.arange(images), samples)
            decoding.keep(rows, rows)
        drawn = loop.run(decoding, images * samples)
        return [_with_alternatives(drawn[i : i + samples]) for i in range(0, len(drawn), samples)]
    if config.num_beams == 1:
        loop = _TokenByToken(special, config, max_new, return_attention, seed=None)
        return loop.run(runtime.start(features, 1, return_attention), images)
    search = _BeamSearch(special, config, max_new, return_attention)
    return search.run(runtime.start(features, config.num_beams, return_attention), images)


def _with_alternatives(ranked: list[Hypothesis]) -> Hypothesis:
    """The first hypothesis, carrying the others as its alternatives."""
    first, *others = ranked
    return Hypothesis(first.ids, first.score, first.attention, others)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise, in float64: the sums do not depend on the row's neighbours or on SIMD width."""
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def best_first(values: np.ndarray, k: int) -> np.ndarray:
    """The indices of each row's `k` largest values, largest first, ties to the lower index: a
    stable argsort's first `k`, without sorting the row. Beam search ranks each image's
    beams x vocabulary candidates every step; for 8 images and CLIP's vocabulary the full sort
    took 126 ms a step, this 16 ms (`bench/beam_ranking.py`)."""
    if k >= values.shape[-1] or len(values) == 0:
        return np.argsort(-values, axis=-1, kind="stable")[:, :k]
    kth = -np.partition(-values, k - 1, axis=-1)[:, k - 1]  # each row's k-th largest value
    rows = []
    for row, threshold in zip(values, kth):
        above = np.flatnonzero(row > threshold)
        tied = np.flatnonzero(row == threshold)[: k - len(above)]
        chosen = np.concatenate([above, tied])
        rows.append(chosen[np.lexsort((chosen, -row[chosen]))])
    return np.stack(rows)


def repeated_ngram_tokens(ids: list[int], n: int) -> list[int]:
    """Tokens that would complete an n-gram already present in `ids`."""
    if n <= 0 or len(ids) < n:
        return []
    prefix = tuple(ids[len(ids) - n + 1 :])
    return [ids[i + n - 1] for i in range(len(ids) - n + 1) if tuple(ids[i : i + n - 1]) == prefix]


def worth_compacting(dead_rows: int, rows: int) -> bool:
    """Whether to drop the rows of ended captions (or done images) from the batch now: once they
    are a quarter of it. Each drop copies the rows kept (their cache, and the image's keys and
    values), which costs more than running a few dead rows for some steps, but much less than
    running a quarter of the batch to the end."""
    return dead_rows > 0 and 4 * dead_rows >= rows


class _Step:
    """What every strategy does with a step's logits: mask, then log-probabilities."""

    def __init__(self, special: SpecialTokens, config: GenerationConfig, temperature: float):
        self.special, self.config, self.temperature = special, config, temperature

    def log_probs(self, logits: np.ndarray, history: list[list[int]], step: int) -> np.ndarray:
        """Log-probabilities of the next token for each row, banned tokens at -inf."""
        logits = np.array(logits, dtype=np.float32)  # a copy: masked in place below
        if self.temperature != 1.0:
            logits /= np.float32(self.temperature)
        logits[:, list(self.special.banned)] = -np.inf
        if step < self.config.min_new_tokens:  # every live row has `step` tokens so far
            logits[:, self.special.end] = -np.inf
        for row, ids in enumerate(history):
            banned = repeated_ngram_tokens(ids, self.config.no_repeat_ngram_size)
            if banned:
                logits[row, banned] = -np.inf
        return log_softmax(logits)


class _TokenByToken(_Step):
    """Greedy (no seed, no sampling) or nucleus sampling: one hypothesis per row. Ended captions
    leave the batch (see worth_compacting), so the decoder mostly runs the captions going."""

    def __init__(
        self,
        special: SpecialTokens,
        config: GenerationConfig,
        max_new: int,
        return_attention: bool,
        seed: int | None,
    ) -> None:
        sampling = config.do_sample
        super().__init__(special, config, config.temperature if sampling else 1.0)
        self.max_new, self.return_attention = max_new, return_attention
        self.rng = np.random.default_rng(seed) if sampling else None

    def run(self, decoding: Decoding, rows: int) -> list[Hypothesis]:
        end = self.special.end
        history: list[list[int]] = [[] for _ in range(rows)]
        attention: list[list[np.ndarray]] = [[] for _ in range(rows)]
        scores = [0.0] * rows
        live = list(range(rows))  # the hypothesis of each row the decoder runs
        ended = [False] * rows  # rows whose caption ended, not yet dropped
        tokens = [self.special.start] * rows
        for step in range(self.max_new):
            logits, weights = decoding.step(np.array(tokens, np.int64))
            log_probs = self.log_probs(logits, [history[i] for i in live], step)
            if self.rng is None:
                chosen = log_probs.argmax(-1)
            else:
                chosen = nucleus(log_probs, self.config.top_p, self.rng)
            tokens = chosen.tolist()
            chosen_log_probs = log_probs[np.arange(len(tokens)), chosen].tolist()
            for row, (token, log_prob) in enumerate(zip(tokens, chosen_log_probs)):
                if ended[row]:
                    tokens[row] = end
                    continue
                scores[live[row]] += log_prob
                if token == end:
                    ended[row] = True
                else:
                    history[live[row]].append(token)
                    if self.return_attention:
                        assert weights is not None  # started with attention
                        attention[live[row]].append(weights[row])
            dead = sum(ended)
            if dead == len(ended):
                break
            if worth_compacting(dead, len(ended)):
                kept = [row for row, done in enumerate(ended) if not done]
                decoding.keep(np.array(kept), np.array(kept))  # one row per image row
                live, tokens = [live[row] for row in kept], [tokens[row] for row in kept]
                ended = [False] * len(kept)
        return [
            Hypothesis(ids, score, _stacked(weights) if self.return_attention else None)
            for ids, score, weights in zip(history, scores, attention)
        ]


def nucleus(log_probs: np.ndarray, top_p: float, rng: np.random.Generator) -> np.ndarray:
    """Sample from the smallest set of tokens whose probability mass reaches `top_p`: one
    uniform draw per row against the cumulative distribution (inverse CDF); with top_p >= 1
    no sort at all (self-critical training samples thousands of captions)."""
    probs = np.exp(log_probs)
    order = None
    if top_p < 1.0:
        order = np.argsort(-probs, axis=-1, kind="stable")
        probs = np.take_along_axis(probs, order, -1)
        mass_before = probs.cumsum(-1) - probs
        probs[mass_before >= top_p] = 0.0
    cumulative = probs.cumsum(-1)
    draw = rng.random((len(probs), 1)) * cumulative[:, -1:]
    # The first token whose cumulative mass exceeds the draw; tokens of zero mass never are.
    picked = np.minimum((cumulative <= draw).sum(-1), probs.shape[-1] - 1)
    return picked if order is None else order[np.arange(len(order)), picked]


def _stacked(weights: list[np.ndarray]) -> np.ndarray:
    return np.stack(weights) if weights else np.zeros((0,), np.float32)


@dataclass
class _Beams:
    """Beam search between two decoder steps. Rows are `beams` consecutive ones per image still
    searching, in `searching` order; `finished` and `done` are per image of the batch."""

    tokens: list[int]  # each row's last token: the next step's input
    history: list[list[int]]
    attention: list[list[np.ndarray]]
    scores: np.ndarray  # (searching images, beams): -inf for a dead row
    finished: list[list[Hypothesis]]
    done: list[bool]
    searching: list[int]


@dataclass
class _Extensions:
    """The rows the next step runs: the row each extends, the token it adds, its score."""

    rows: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)

    def add(self, row: int, token: int, score: float) -> None:
        self.rows.append(row)
        self.tokens.append(token)
        self.scores.append(score)

    def only(self, kept: list[int]) -> _Extensions:
        """These entries alone, in this order."""
        return _Extensions(
            [self.rows[i] for i in kept],
            [self.tokens[i] for i in kept],
            [self.scores[i] for i in kept],
        )


class _BeamSearch(_Step):
    """Batched beam search: every image keeps `num_beams` live hypotheses in one decoder call.

    Finished hypotheses are scored as sum(log p) / length ** length_penalty; an image is done once
    it has `num_beams` of them and no live hypothesis could still beat the worst. Each image's
    best `num_return_sequences` of them are returned (distinct token sequences). Done images
    leave the batch (see worth_compacting), so the decoder mostly runs the images searching.
    """

    def __init__(
        self, special: SpecialTokens, config: GenerationConfig, max_new: int, return_attention: bool
    ) -> None:
        super().__init__(special, config, 1.0)
        self.max_new, self.return_attention = max_new, return_attention
        self.beams = config.num_beams

    def normalised(self, score: float, length: int) -> float:
        return score / max(length, 1) ** self.config.length_penalty

    def run(self, decoding: Decoding, images: int) -> list[Hypothesis]:
        state = self._start(images)
        for step in range(self.max_new):
            logits, weights = decoding.step(np.array(state.tokens, np.int64))
            log_probs = self.log_probs(logits, state.history, step)
            extensions = self._extend(state, log_probs, step)
            going = [slot for slot, b in enumerate(state.searching) if not state.done[b]]
            if not going:
                break
            self._advance(state, decoding, extensions, going, weights)
        return [self._best(image, state) for image in range(images)]

    def _start(self, images: int) -> _Beams:
        rows = images * self.beams
        # Only the first beam of each image is live at the start, so the beams do not all repeat it.
        scores = np.full((images, self.beams), -np.inf)
        scores[:, 0] = 0.0
        return _Beams(
            tokens=[self.special.start] * rows,
            history=[[] for _ in range(rows)],
            attention=[[] for _ in range(rows)],
            scores=scores,
            finished=[[] for _ in range(images)],
            done=[False] * images,
            searching=list(range(images)),
        )

    def _extend(self, state: _Beams, log_probs: np.ndarray, step: int) -> _Extensions:
        """Each searching image's next `beams` rows: its best candidates that do not end (those
        that end join its finished ones), padded with dead rows; marks the images now done."""
        beams, vocab = self.beams, log_probs.shape[-1]
        candidates = (state.scores[:, :, None] + log_probs.reshape(-1, beams, vocab)).reshape(
            len(state.searching), -1
        )
        top_index = best_first(candidates, 2 * beams)
        top_scores = np.take_along_axis(candidates, top_index, -1)
        extensions = _Extensions()
        for slot, image in enumerate(state.searching):
            ranked = zip(top_scores[slot].tolist(), top_index[slot].tolist())
            self._extend_image(state, slot, image, ranked, vocab, step, extensions)
        return extensions

    def _extend_image(
        self,
        state: _Beams,
        slot: int,
        image: int,
        ranked: Iterable[tuple[float, int]],
        vocab: int,
        step: int,
        extensions: _Extensions,
    ) -> None:
        beams, end = self.beams, self.special.end
        kept = 0
        for score, index in ranked:
            if state.done[image] or score == -np.inf or kept == beams:
                break
            row, token = slot * beams + index // vocab, index % vocab
            if token == end:  # `step` tokens plus the end token
                state.finished[image].append(self._finished(state, row, score, step + 1))
                continue
            extensions.add(row, token, score)
            kept += 1
        for _ in range(beams - kept):  # a done image: pad with dead rows
            extensions.add(slot * beams, end, -np.inf)
        finished = state.finished[image]
        if not state.done[image] and len(finished) >= beams:
            worst = sorted(h.score for h in finished)[-beams]
            # log-probs only fall, so a live beam is unlikely to end above this (as in HF)
            best_live = max(extensions.scores[-beams:])
            state.done[image] = self.normalised(best_live, step + 2) <= worst

    def _advance(
        self,
        state: _Beams,
        decoding: Decoding,
        extensions: _Extensions,
        going: list[int],
        weights: np.ndarray | None,
    ) -> None:
        """Make the extensions the rows, first dropping the done images' rows when worth it."""
        beams, kept_images = self.beams, None
        if worth_compacting(len(state.searching) - len(going), len(state.searching)):
            extensions = extensions.only([slot * beams + k for slot in going for k in range(beams)])
            state.searching = [state.searching[slot] for slot in going]
            kept_images = np.array(going)
        # A row only inherits from a beam of its own image: the image rows change only when
        # images leave.
        decoding.keep(np.array(extensions.rows), kept_images)
        rows = extensions.rows
        state.history = [
            state.history[row] + [token] for row, token in zip(rows, extensions.tokens)
        ]
        if self.return_attention:
            assert weights is not None  # started with attention
            state.attention = [state.attention[row] + [weights[row]] for row in rows]
        state.scores = np.array(extensions.scores).reshape(len(state.searching), beams)
        state.tokens = extensions.tokens

    def _finished(self, state: _Beams, row: int, score: float, length: int) -> Hypothesis:
        weights = _stacked(state.attention[row]) if self.return_attention else None
        return Hypothesis(list(state.history[row]), self.normalised(score, length), weights)

    def _best(self, image: int, state: _Beams) -> Hypothesis:
        """The image's best `num_return_sequences`; out of length, the live beams compete with
        the finished ones."""
        pool = list(state.finished[image])
        if not state.done[image]:
            slot = state.searching.index(image)
            for k in range(self.beams):
                score = float(state.scores[slot, k])
                if score > -np.inf:
                    pool.append(self._finished(state, slot * self.beams + k, score, self.max_new))
        pool.sort(key=lambda h: h.score, reverse=True)
        return _with_alternatives(pool[: self.config.num_return_sequences])
