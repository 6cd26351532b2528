"""Caption datasets: every supported format read into a list of `CaptionRecord`."""

from captioner.data.formats import (
    CaptionRecord,
    karpathy_splits,
    load_hub,
    load_jsonl,
    load_kaggle,
    load_karpathy,
    load_records,
    load_table,
)
from captioner.data.splits import SplitConfig, hash_split, same_split

__all__ = [
    "CaptionRecord",
    "SplitConfig",
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
