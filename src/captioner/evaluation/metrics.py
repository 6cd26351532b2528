"""Caption metrics computed the way published papers compute them (the coco-caption toolkit).

Scores come from `pycocoevalcap`'s own scorers: corpus-level BLEU-1..4 with the closest-reference
brevity penalty, METEOR 1.5, ROUGE-L (beta 1.2) and CIDEr-D (sigma 6, clipped, x10, document
frequencies from the references of the evaluated images). Only the tokenisation is ours:
coco-caption runs Stanford's PTBTokenizer through Java, and `ptb_tokenize` reproduces it in Python
so that every metric but METEOR works without Java.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# coco-caption's PTBTokenizer drops exactly these tokens after tokenising (its PUNCTUATIONS list).
# Brackets are not dropped: Java lower-cases "-LRB-" to "-lrb-" after escaping, so it no longer
# matches the list and survives into the scores; we keep that quirk to give the same numbers.
PUNCTUATIONS = frozenset(
    {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--",
     "...", ";"}
)  # fmt: skip

# Words Stanford's tokenizer keeps their final period on (in every casing); single letters and
# letter.letter acronyms ("u.s.", "e.g.") keep it too. Other words lose it to a "." token.
ABBREVIATIONS = frozenset(
    {"mr", "mrs", "ms", "dr", "st", "mt", "ave", "blvd", "rd", "vs", "etc", "inc", "jr", "sr", "co",
     "ltd", "corp", "prof", "gen", "col", "sgt", "capt", "lt", "rev", "jan", "feb", "aug", "sept",
     "oct", "nov", "dec", "mon", "tue", "fri", "ft", "dept", "univ", "est", "cf", "al"}
)  # fmt: skip

# Words the PTB tokenizer splits in two although they hold no apostrophe.
_SPLIT_WORDS = {
    "cannot": ("can", "not"),
    "gonna": ("gon", "na"),
    "gotta": ("got", "ta"),
    "wanna": ("wan", "na"),
    "gimme": ("gim", "me"),
    "lemme": ("lem", "me"),
}

# Stanford's escapes for brackets; a plain double quote becomes `` or '' (dropped either way).
_ESCAPES = {"(": "-LRB-", ")": "-RRB-", "[": "-LSB-", "]": "-RSB-", "{": "-LCB-", "}": "-RCB-"}
_ESCAPES['"'] = "''"

# Typographic quotes and currency signs as Stanford normalises them.
_NORMALISE = str.maketrans({"\u201c": '"', "\u201d": '"', "\u2018": "'", "\u2019": "'"})
_CURRENCY = str.maketrans({"\u00a3": "#", "\u20ac": "$"})

_A = r"[^\W_]"  # a letter or digit, any script
_TOKEN = re.compile(
    rf"""
    (?P<word>
        (?:[#@](?=[^\W\d_])|\.(?=\d))?{_A}+          # "#tag", "@home", ".5" start a word
        (?:(?:[-./@_]|'(?=[^\W\d_])|(?<=\d)[,:](?=\d)){_A}+)*  # e-mail, u.s.a, it's, 1,000, 10:30
    )
    | (?P<clitic>'(?:s|m|d|re|ve|ll|em|n')(?!{_A}))   # a clitic standing alone: "dog 's"
    | (?P<dots>\.+)
    | (?P<dashes>-+)
    | (?P<bangs>[?!]+)
    | (?P<quote>``|''|[`'"])
    | (?P<other>\S)
    """,
    re.VERBOSE | re.IGNORECASE,
)
_CLITIC_END = re.compile(r"(.+?)(n't|'(?:s|m|d|re|ve|ll))$", re.IGNORECASE)
_ACRONYM = re.compile(rf"(?:{_A}\.)*[^\W\d_]")


def ptb_tokenize(text: str) -> str:
    """One caption as coco-caption's PTBTokenizer leaves it: lower-case tokens joined by spaces.

    Reproduces Stanford's PTB tokenizer for ordinary caption text (words, numbers, hyphens,
    clitics, punctuation, quotes, brackets, $ # % &): "A man's hat (red)." -> "a man 's hat
    -lrb- red -rrb-". Exotica such as URLs or "y'all" may tokenise differently from Java.
    """
    text = text.translate(_NORMALISE).translate(_CURRENCY)
    tokens: list[str] = []
    position = 0
    while match := _TOKEN.search(text, position):
        position = match.end()
        kind, token = match.lastgroup, match.group()
        if kind == "word":
            if text.startswith(".", position) and _keeps_period(token):
                token += "."
                position += 1
            tokens.extend(_split_word(token))
        elif kind == "dots":
            tokens.append("..." if len(token) >= 3 else ".")
        elif kind == "dashes":
            tokens.append("-" if len(token) == 1 else "--")
        else:
            tokens.append(_ESCAPES.get(token, token))
    lowered = [token.lower() for token in tokens]  # before filtering, as Java does
    return " ".join(token for token in lowered if token not in PUNCTUATIONS)


def _keeps_period(word: str) -> bool:
    return word.lower() in ABBREVIATIONS or _ACRONYM.fullmatch(word) is not None


def _split_word(word: str) -> tuple[str, ...]:
    """Clitics off their word, PTB-style: "don't" -> "do n't", "it's" -> "it 's"."""
    if (pair := _SPLIT_WORDS.get(word.lower())) is not None:
        return pair
    if (match := _CLITIC_END.match(word)) is not None:
        return match.group(1), match.group(2)
    return (word,)


def caption_metrics(
    predictions: dict[str, str], references: dict[str, list[str]], meteor: bool = True
) -> dict[str, float | None]:
    """BLEU-1..4, METEOR, ROUGE-L and CIDEr-D over the images in `predictions`.

    Every predicted image needs its references (all of them are used); references of images
    without a prediction are ignored, so CIDEr's document frequencies come from the evaluated
    set only. `meteor` is None when it was not asked for or Java cannot run it.
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    if not predictions:
        raise ValueError("no predictions to score")
    missing = [image_id for image_id in predictions if not references.get(image_id)]
    if missing:
        raise ValueError(f"{len(missing)} predicted images have no references, e.g. {missing[0]}")
    res = {image_id: [ptb_tokenize(text)] for image_id, text in predictions.items()}
    gts = {image_id: [ptb_tokenize(text) for text in references[image_id]] for image_id in res}

    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, _ = Rouge().compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)
    return {
        "bleu1": float(bleu[0]),
        "bleu2": float(bleu[1]),
        "bleu3": float(bleu[2]),
        "bleu4": float(bleu[3]),
        "meteor": _meteor(gts, res) if meteor else None,
        "rouge_l": float(rouge),
        "cider": float(cider),
    }


def _meteor(gts: dict[str, list[str]], res: dict[str, list[str]]) -> float | None:
    """pycocoevalcap's METEOR 1.5 (a Java subprocess), or None with a warning if it cannot run."""
    if shutil.which("java") is None:
        log.warning("METEOR skipped: Java is missing (install a JRE and put `java` on PATH)")
        return None
    import pycocoevalcap.meteor.meteor as meteor_module

    folder = Path(meteor_module.__file__).parent
    needed = [folder / meteor_module.METEOR_JAR, folder / "data" / "paraphrase-en.gz"]
    if absent := [str(path) for path in needed if not path.is_file()]:
        log.warning("METEOR skipped: pycocoevalcap lacks %s", ", ".join(absent))
        return None
    try:
        scorer = meteor_module.Meteor()
        try:
            score, _ = scorer.compute_score(gts, res)
        finally:
            _stop_meteor(scorer)
    except (OSError, ValueError) as error:  # Java did not start, or died without a score
        # repr now: a record that kept the error would keep its frames, and the scorer, alive
        log.warning("METEOR skipped: the METEOR jar failed: %s", repr(error))
        return None
    return float(score)


def _stop_meteor(scorer: Any) -> None:
    """Stops METEOR's Java before pycocoevalcap's `__del__` does: that waits on the lock a failed
    `compute_score` keeps, and raises BrokenPipeError closing the pipe of a Java that died."""
    if scorer.lock.locked():
        scorer.lock.release()
    process = scorer.meteor_p
    process.kill()
    with contextlib.suppress(OSError):  # a Java that died leaves unflushed bytes in the pipe
        process.stdin.close()
    process.wait()  # `__del__` then finds the pipe closed and the process gone: nothing to do
