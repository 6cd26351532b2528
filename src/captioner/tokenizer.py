"""CLIP's byte-level BPE (ids equal to OpenAI's), offline, with an optional compact vocabulary.

A 49408-way output layer dominates a small decoder's cost, so a model can keep only the CLIP ids
seen in its training captions. The model then works in *compact* ids 0..n-1, and `vocab` maps them
back to CLIP ids; that list is saved beside the weights. Compact id 0 is the end token (which also
pads, as in CLIP), 1 the start token, 2 stands for any CLIP token outside the vocabulary.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

START_OF_TEXT = 49406
END_OF_TEXT = 49407
CLIP_VOCAB_SIZE = 49408
UNKNOWN = -1  # stands in the vocabulary list for "outside the vocabulary"


def _clip_bpe() -> Any:
    import instant_clip_tokenizer

    return instant_clip_tokenizer.Tokenizer()


class CaptionTokenizer:
    """Encodes captions to model ids and back; `vocab=None` means the full CLIP vocabulary."""

    def __init__(self, vocab: Sequence[int] | None = None):
        self._bpe = _clip_bpe()
        if vocab is None:
            self.vocab = None
            self.start_id, self.end_id, self.unknown_id = START_OF_TEXT, END_OF_TEXT, None
            self._to_model: dict[int, int] = {}
        else:
            vocab = list(vocab)
            if vocab[:3] != [END_OF_TEXT, START_OF_TEXT, UNKNOWN]:
                raise ValueError("a compact vocabulary must start with [end, start, unknown]")
            self.vocab = vocab
            self.start_id, self.end_id, self.unknown_id = 1, 0, 2
            self._to_model = {clip_id: i for i, clip_id in enumerate(vocab) if clip_id >= 0}

    @property
    def pad_id(self) -> int:
        return self.end_id

    @property
    def vocab_size(self) -> int:
        return CLIP_VOCAB_SIZE if self.vocab is None else len(self.vocab)

    @classmethod
    def build_compact(cls, captions: Iterable[str], min_count: int = 1) -> CaptionTokenizer:
        """A vocabulary of the CLIP tokens used at least `min_count` times in `captions`."""
        bpe = _clip_bpe()
        counts = Counter(token for text in captions for token in bpe.encode(clean(text)))
        kept = sorted(token for token, n in counts.items() if n >= min_count)
        return cls([END_OF_TEXT, START_OF_TEXT, UNKNOWN, *kept])

    def clip_ids(self, text: str) -> list[int]:
        """OpenAI CLIP's ids for `text`, start and end tokens included."""
        return [START_OF_TEXT, *self._bpe.encode(clean(text)), END_OF_TEXT]

    def encode(self, text: str) -> list[int]:
        """Model ids, start and end tokens included."""
        ids = self.clip_ids(text)
        if self.vocab is None:
            return ids
        assert self.unknown_id is not None  # a compact vocabulary has one
        return [self._to_model.get(i, self.unknown_id) for i in ids]

    def batch(self, texts: Sequence[str], max_length: int) -> np.ndarray:
        """(batch, length) ids padded with the end token; captions longer than `max_length` are
        cut, keeping a final end token so the model still learns to stop."""
        rows = [self.encode(text)[:max_length] for text in texts]
        rows = [row if row[-1] == self.end_id else row[:-1] + [self.end_id] for row in rows]
        length = max(len(row) for row in rows)
        out = np.full((len(rows), length), self.pad_id, dtype=np.int64)
        for i, row in enumerate(rows):
            out[i, : len(row)] = row
        return out

    def _to_clip(self, ids: Iterable[int]) -> list[int]:
        specials = {self.start_id, self.end_id, self.unknown_id}
        ids = [int(i) for i in ids if int(i) not in specials]
        return ids if self.vocab is None else [self.vocab[i] for i in ids]

    def decode(self, ids: Iterable[int]) -> str:
        """Clean text from model ids: stops at the first end token, drops special tokens."""
        return detokenize(self._bpe.decode(self._to_clip(_until_end(ids, self.end_id))))

    def token_strings(self, ids: Iterable[int]) -> list[str]:
        """One display string per model id (for attention maps); special tokens become ''."""
        return [clean(self._bpe.decode(self._to_clip([i]))) for i in ids]

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"kind": "clip-bpe", "vocab": self.vocab}) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> CaptionTokenizer:
        data = json.loads(Path(path).read_text())
        if data.get("kind") != "clip-bpe":
            raise ValueError(f"{path}: not a captioner tokenizer file")
        return cls(data["vocab"])


def clean(text: str) -> str:
    """CLIP's own normalisation: whitespace collapsed; the BPE itself lower-cases."""
    return re.sub(r"\s+", " ", text).strip()


# Undo the BPE's word-end spacing around punctuation: regexes applied in order, the replacements
# in JavaScript's syntax ($1), since captioner.json hands the same rules to the page.
DETOKENIZE = ((" ([.,!?;:])", "$1"), (" '(s|t|re|ve|m|ll|d)\\b", "'$1"))


def detokenize(text: str) -> str:
    """ "it 's a dog ." -> "it's a dog."."""
    text = clean(text)
    for pattern, replacement in DETOKENIZE:
        text = re.sub(pattern, replacement.replace("$1", r"\1"), text)
    return text


def _until_end(ids: Iterable[int], end_id: int) -> list[int]:
    out = []
    for i in ids:
        if int(i) == end_id:
            break
        out.append(int(i))
    return out
