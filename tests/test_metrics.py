"""Caption metrics against values worked out by hand, and the Java-free PTB tokenizer."""

from __future__ import annotations

import gc
import json
import logging
import math
import shutil
import sys

import pytest
from conftest import FLICKR8K, require_flickr8k

from captioner.evaluation import caption_metrics, ptb_tokenize
from captioner.evaluation import metrics as metrics_module

HAS_JAVA = shutil.which("java") is not None


def score(predictions: dict[str, str], references: dict[str, list[str]]) -> dict:
    return caption_metrics(predictions, references, meteor=False)


# ---------------------------------------------------------------- tokenizer


@pytest.mark.parametrize(
    ("raw", "tokenized"),
    [
        # Each expected string is what coco-caption's Java PTBTokenizer printed for the input.
        # Lower-cased; the final period is split off and dropped.
        ("A dog runs on the grass.", "a dog runs on the grass"),
        ("A dog runs on the grass .", "a dog runs on the grass"),
        # , ; : ! ? " -- ... are dropped; hyphenated words stay whole.
        (
            'Two dogs; one cat: a "black-and-white" one, running... -- fast!',
            "two dogs one cat a black-and-white one running fast",
        ),
        # Clitics are split off PTB-style and kept.
        ("The dog's toy isn't red, it's blue.", "the dog 's toy is n't red it 's blue"),
        ("can't won't cannot gonna", "ca n't wo n't can not gon na"),
        ("I'm you're we've they'd she'll", "i 'm you 're we 've they 'd she 'll"),
        ("children's toys' boxes", "children 's toys boxes"),
        # Numbers keep their inner punctuation; $ and % are tokens that stay.
        (
            "A 3.5 mile run at 10:30 costs $5.00 for 1,000 people, 100%",
            "a 3.5 mile run at 10:30 costs $ 5.00 for 1,000 people 100 %",
        ),
        # Abbreviations and acronyms keep their period.
        ("Mr. Smith in the U.S. on a St. Bernard", "mr. smith in the u.s. on a st. bernard"),
        # coco-caption quirk: brackets become -lrb- / -rrb- and are NOT dropped.
        ("a man (in red)", "a man -lrb- in red -rrb-"),
        # Typographic quotes behave like ASCII ones.
        ("\u201ccurly\u201d it\u2019s", "curly it 's"),
        ("  double  space\ttab  ", "double space tab"),
        ("!!", "!!"),  # only a lone ! or ? is in coco-caption's list
        ("", ""),
    ],
)
def test_ptb_tokenize_examples(raw, tokenized):
    assert ptb_tokenize(raw) == tokenized


@pytest.mark.skipif(not HAS_JAVA, reason="needs java for coco-caption's PTBTokenizer")
def test_ptb_tokenize_matches_java_on_flickr8k_dev():
    """Our tokenizer against the real thing, on 5000 real captions."""
    require_flickr8k()
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    captions = {}
    for line in (FLICKR8K / "captions.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["split"] == "dev":
            captions[row["image_id"]] = row["captions"]
    java = PTBTokenizer().tokenize(
        {key: [{"caption": text} for text in texts] for key, texts in captions.items()}
    )
    ours = {key: [ptb_tokenize(text) for text in texts] for key, texts in captions.items()}
    assert sum(len(texts) for texts in captions.values()) == 5000
    assert ours == java


# ---------------------------------------------------------------- BLEU


def test_identical_caption_scores_one():
    # Every n-gram of the prediction is in the reference, lengths equal: BLEU-n = 1, ROUGE-L = 1.
    result = score({"1": "a dog runs on the grass"}, {"1": ["a dog runs on the grass"]})
    for key in ("bleu1", "bleu2", "bleu3", "bleu4", "rouge_l"):
        assert result[key] == pytest.approx(1.0, abs=1e-8)


def test_tokenisation_makes_case_and_punctuation_irrelevant():
    result = score({"1": "A Dog runs on the grass."}, {"1": ["a dog runs on the grass"]})
    assert result["bleu4"] == pytest.approx(1.0, abs=1e-8)


def test_bleu_one_word_off():
    # pred "a cat runs on the grass" vs ref "a dog runs on the grass", both 6 words, so BP = 1.
    # 1-grams: a runs on the grass match, cat does not       -> 5/6
    # 2-grams: runs-on on-the the-grass of 5                  -> 3/5
    # 3-grams: runs-on-the on-the-grass of 4                  -> 2/4
    # 4-grams: runs-on-the-grass of 3                         -> 1/3
    # BLEU-n is the geometric mean of the first n precisions.
    result = score({"1": "a cat runs on the grass"}, {"1": ["a dog runs on the grass"]})
    assert result["bleu1"] == pytest.approx(5 / 6)
    assert result["bleu2"] == pytest.approx(math.sqrt(5 / 6 * 3 / 5))  # = sqrt(1/2)
    assert result["bleu3"] == pytest.approx((5 / 6 * 3 / 5 * 2 / 4) ** (1 / 3))  # = (1/4)^(1/3)
    assert result["bleu4"] == pytest.approx((5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** (1 / 4))
    # ROUGE-L: LCS = 5 (all but cat/dog); P = R = 5/6, so F = 5/6 whatever beta.
    assert result["rouge_l"] == pytest.approx(5 / 6)


def test_bleu_brevity_penalty_uses_the_closest_reference_length():
    # pred "a dog runs" (c = 3) vs refs of 6 and 4 words: the closest length is r = 4,
    # so BP = exp(1 - r/c) = exp(1 - 4/3). Every 1/2/3-gram of the prediction matches.
    result = score({"1": "a dog runs"}, {"1": ["a dog runs on the grass", "a dog runs fast"]})
    penalty = math.exp(1 - 4 / 3)
    assert result["bleu1"] == pytest.approx(penalty)
    assert result["bleu3"] == pytest.approx(penalty)
    # A 3-word prediction has no 4-gram: coco-caption's smoothing makes that precision
    # (0 + 1e-15) / (0 + 1e-9) = 1e-6 rather than 0/0.
    assert result["bleu4"] == pytest.approx((1e-6) ** (1 / 4) * penalty)


def test_bleu_is_corpus_level_not_a_mean_of_sentences():
    # Image 1: "a dog" vs "a dog": 2 of 2 unigrams; image 2: one word off, 5 of 6.
    # Corpus BLEU-1 pools the counts: (2 + 5) / (2 + 6) = 7/8; the sentence mean would be 11/12.
    result = score(
        {"1": "a dog", "2": "a cat runs on the grass"},
        {"1": ["a dog"], "2": ["a dog runs on the grass"]},
    )
    assert result["bleu1"] == pytest.approx(7 / 8)


# ---------------------------------------------------------------- ROUGE-L


def test_rouge_l_beta_and_best_precision_and_recall_over_references():
    # pred "a man rides a horse" (5 words).
    # ref 1 "a man is riding a brown horse on a beach" (10): LCS "a man a horse" = 4 -> P 4/5, R 4/10
    # ref 2 "a man rides" (3): LCS 3 -> P 3/5, R 3/3
    # coco-caption takes the best P (4/5) and the best R (1) separately, then
    # F = (1 + b^2) P R / (R + b^2 P) with b = 1.2: 2.44 * 0.8 / (1 + 1.44 * 0.8) = 1.952 / 2.152
    result = score(
        {"1": "a man rides a horse"},
        {"1": ["a man is riding a brown horse on a beach", "a man rides"]},
    )
    assert result["rouge_l"] == pytest.approx(1.952 / 2.152)


def test_rouge_l_single_reference():
    # Only ref 1 above: P = 0.8, R = 0.4; F = 2.44 * 0.32 / (0.4 + 1.152) = 0.7808 / 1.552.
    result = score(
        {"1": "a man rides a horse"}, {"1": ["a man is riding a brown horse on a beach"]}
    )
    assert result["rouge_l"] == pytest.approx(0.7808 / 1.552)


# ---------------------------------------------------------------- CIDEr-D


def test_cider_is_zero_on_a_single_image():
    # Document frequencies come from the evaluated images' references: with one image every
    # n-gram has df = 1 = N, so idf = log(N) - log(df) = 0 and every tf-idf vector is zero.
    result = score({"1": "a dog runs on the grass"}, {"1": ["a dog runs on the grass"]})
    assert result["cider"] == 0.0


def test_cider_d_on_a_two_image_corpus_by_hand():
    # N = 2 images; reference n-grams and their df: a:2, dog:1, cat:1, "a dog":1, "a cat":1.
    # idf = log(2) - log(max(1, df)) =: L for everything but "a" (idf 0); unseen n-grams get L.
    #
    # Image 2, "a cat" vs ["a cat"]: unigram vectors (a:0, cat:L) equal -> cosine 1; bigram
    # ("a cat": L) -> 1; no 3/4-grams -> 0. Same length, no penalty. Mean over n = 1..4
    # is (1 + 1 + 0 + 0) / 4 = 0.5, times 10 -> 5.0.
    #
    # Image 1, "a dog dog" vs ["a dog"]:
    #  1-grams: hyp (a:0, dog:2L), ref (dog:L). Clipped dot = min(2L, L) * L = L^2;
    #           norms 2L and L -> 1/2 (it would be 1 without CIDEr-D's clipping).
    #  2-grams: hyp ("a dog":L, "dog dog":L), ref ("a dog":L) -> L^2 / (sqrt(2) L * L) = 1/sqrt(2)
    #  3-grams: hyp has one, ref none -> 0; 4-grams: none -> 0.
    #  Length penalty (lengths counted in bigrams, 2 vs 1): exp(-(2-1)^2 / (2 * 6^2)) = exp(-1/72)
    #  -> 10 * (1/2 + 1/sqrt(2)) * exp(-1/72) / 4
    result = score({"1": "a dog dog", "2": "a cat"}, {"1": ["a dog"], "2": ["a cat"]})
    image_1 = 10 * (0.5 + 1 / math.sqrt(2)) * math.exp(-1 / 72) / 4
    assert result["cider"] == pytest.approx((image_1 + 5.0) / 2)


def test_cider_averages_over_references():
    # Image 1 with an extra reference "a cat" that shares nothing weighted with "a dog"
    # (cosine 0 for 1- and 2-grams; "a" has idf 0): the per-reference sum is divided by 2.
    # Image 2 "a cat" vs ["a cat"] as before -> 5.0.
    # df now: a:2, dog:1, cat:2 (both images have a "cat" reference), "a dog":1, "a cat":2.
    # Image 1: "a dog" vs "a dog" -> 1-grams (dog:L) cosine 1, 2-grams cosine 1 -> 5.0; vs "a cat"
    # -> 0. Mean over references: 2.5. Image 2: every n-gram of "a cat" has df 2 -> idf 0 -> 0.
    result = score({"1": "a dog", "2": "a cat"}, {"1": ["a dog", "a cat"], "2": ["a cat"]})
    assert result["cider"] == pytest.approx((2.5 + 0.0) / 2)


# ---------------------------------------------------------------- API and METEOR


def test_result_keys_and_input_checks():
    result = score({"1": "a dog"}, {"1": ["a dog"], "unused": ["ignored"]})
    assert list(result) == ["bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider"]
    assert result["meteor"] is None
    with pytest.raises(ValueError, match="no references"):
        score({"1": "a dog", "2": "a cat"}, {"1": ["a dog"]})
    with pytest.raises(ValueError, match="no predictions"):
        score({}, {"1": ["a dog"]})


def test_meteor_is_none_without_java(monkeypatch, caplog):
    monkeypatch.setattr(metrics_module.shutil, "which", lambda name: None)
    predictions = {"1": "a cat runs on the grass"}
    references = {"1": ["a dog runs on the grass"]}
    with caplog.at_level(logging.WARNING, logger="captioner.evaluation.metrics"):
        result = caption_metrics(predictions, references, meteor=True)
    assert result["meteor"] is None
    assert "Java is missing" in caplog.text
    assert result["bleu1"] == pytest.approx(5 / 6)  # the rest is intact
    assert result["rouge_l"] == pytest.approx(5 / 6)


def test_meteor_is_none_when_java_fails(tmp_path, monkeypatch, caplog):
    # A `java` that dies at once (no JRE behind the launcher, too little memory for -Xmx2G...).
    fake = tmp_path / "java"
    # It closes its input first, so captioner's writes to it fail (BrokenPipeError) every time.
    fake.write_text("#!/bin/sh\nexec 0<&-\nsleep 0.2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    # pycocoevalcap's `Meteor.__del__` raised BrokenPipeError on that pipe ("Exception ignored").
    ignored: list[object] = []
    monkeypatch.setattr(sys, "unraisablehook", ignored.append)
    with caplog.at_level(logging.WARNING, logger="captioner.evaluation.metrics"):
        result = caption_metrics({"1": "a dog"}, {"1": ["a dog"]}, meteor=True)
    assert result["meteor"] is None
    assert "METEOR jar failed" in caplog.text
    assert result["rouge_l"] == pytest.approx(1.0)
    gc.collect()
    assert ignored == []  # the scorer's `__del__` has run, and raised nothing


@pytest.mark.skipif(not HAS_JAVA, reason="METEOR runs on Java")
def test_meteor_with_java():
    # METEOR 1.5 gives an exact match 1.0; it takes the best reference (a PTB-tokenised one here).
    result = caption_metrics(
        {"1": "A dog runs on the grass.", "2": "two men play guitars"},
        {"1": ["a dog runs on the grass", "a cat"], "2": ["two men play guitars"]},
    )
    assert result["meteor"] == pytest.approx(1.0)
    assert result["bleu4"] == pytest.approx(1.0, abs=1e-8)
