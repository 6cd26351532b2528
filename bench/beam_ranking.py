"""Beam search's ranking of each image's candidates (beams x vocabulary log-probs) at one step:
a stable argsort of the whole row, as beam search did before 2026-12-04, against `best_first`,
which it uses now, for the bundled model's compact vocabulary and for CLIP's whole one.
Median ms per step over `--repeats` calls, and the ratio; the two rankings are checked equal.
"""

from __future__ import annotations

import argparse
from functools import partial

import numpy as np
from _common import header, measure, median

from captioner.decoding import best_first

BEAMS = 3
KEPT = 2 * BEAMS  # candidates kept an image: the beams that go on, and as many that may end
# (images, vocabulary): one caption and a batch of 8, with the bundled model's 2,854 tokens and
# CLIP's 49,408 (the preset flickr30k-clip-original)
SHAPES = [(1, 2854), (8, 2854), (1, 49408), (8, 49408)]


def full_sort(candidates: np.ndarray) -> np.ndarray:
    return np.argsort(-candidates, axis=-1, kind="stable")[:, :KEPT]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=50, help="timed calls per figure")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be 1 or more")
    header("Beam search: ranking one step's candidates")
    print(f"beams {BEAMS}, keeping {KEPT} candidates an image")
    print()
    print("| images | vocabulary | full stable sort | best_first | ratio |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    generator = np.random.default_rng(0)
    for images, vocabulary in SHAPES:
        # log-probs of a step plus each beam's running score, in float64 as beam search has them
        candidates = generator.normal(-12.0, 3.0, size=(images, BEAMS * vocabulary))
        expected = full_sort(candidates)
        if not np.array_equal(best_first(candidates, KEPT), expected):
            raise SystemExit(f"best_first ranks ({images}, {vocabulary}) differently")
        sort_ms = 1e3 * median(measure(partial(full_sort, candidates), args.repeats))
        first_ms = 1e3 * median(measure(partial(best_first, candidates, KEPT), args.repeats))
        print(
            f"| {images} | {vocabulary:,} | {sort_ms:.3f} ms | {first_ms:.3f} ms | "
            f"x{sort_ms / first_ms:.1f} |"
        )


if __name__ == "__main__":
    main()
