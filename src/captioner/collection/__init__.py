"""Caption whole collections: folders, glob patterns, lists and datasets into resumable JSONL or
CSV files, caption files beside the images, or a callback; one process or many (Lightning)."""

from captioner.collection.inputs import ImageItem, dataset_images, find_images, read_list
from captioner.collection.job import (
    CollectionConfig,
    CollectionJob,
    CollectionSummary,
    caption_collection,
)
from captioner.collection.rows import RowFile

__all__ = [
    "CollectionConfig",
    "CollectionJob",
    "CollectionSummary",
    "ImageItem",
    "RowFile",
    "caption_collection",
    "dataset_images",
    "find_images",
    "read_list",
]
