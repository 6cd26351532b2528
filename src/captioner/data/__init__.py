"""Caption datasets: every supported format read into a list of `CaptionRecord`."""

from captioner.data.formats import (
    CaptionRecord,
    hash_split,
    karpathy_splits,
    load_hub,
    load_jsonl,
    load_kaggle,
    load_karpathy,
    load_records,
    load_table,
    same_split,
)

__all__ = [
    "CaptionRecord",
    "hash_split",
    "karpathy_splits",
    "load_hub",
    "load_jsonl",
    "load_kaggle",
    "load_karpathy",
    "load_records",
    "load_table",
    "same_split",
]
