"""Captioning a collection: what is left to do, images decoded in worker processes while the model
works on the previous batch, and each batch's rows written as soon as it is captioned."""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from captioner.collection.inputs import ImageItem, find_images, unique
from captioner.collection.loader import BatchLoader
from captioner.collection.outputs import JobOutputs
from captioner.collection.rows import Row, RowFile
from captioner.config import check_int
from captioner.images import ImageLoadError, UnsupportedImageError
from captioner.model import Caption, Captioner
from captioner.transforms import PreparedImage, Preprocess

Item = TypeVar("Item")
Partial = TypeVar("Partial")

# The most images one batch may hold (memory: each is 3 x crop x crop floats plus its beams).
MAX_BATCH_SIZE = 512
MAX_WORKERS = 64
# Longest --prefix / --suffix: a trigger word or a short phrase, not a document.
MAX_AFFIX_LENGTH = 200
# Heatmaps are drawn over the image shrunk to at most this many pixels a side (a 12 MP photo
# would otherwise be shipped from the worker and drawn at full size once per word).
ATTENTION_IMAGE_SIDE = 1024


def default_workers() -> int:
    """One loader process per core beyond the one the model runs on, at most 4."""
    return max(0, min(4, (os.cpu_count() or 1) - 1))


@dataclass
class CollectionConfig:
    """What a collection job writes and how; generation settings are the model's
    GenerationConfig fields, passed beside it."""

    # A .jsonl or .csv file of one row per image (none: rows only go to `on_row`).
    output: Path | None = None
    # Write each caption into a file beside its image with this suffix (".txt": photo.txt).
    sidecar: str | None = None
    # One heatmap PNG per word, in a folder per image mirroring the images' folders.
    attention_dir: Path | None = None
    # Caption everything again instead of skipping the images that already have a caption.
    overwrite: bool = False
    # Descend into sub-folders of folders given as sources.
    recursive: bool = False
    batch_size: int = 16
    # Processes that decode and preprocess images ahead of the model (None: default_workers()).
    num_workers: int | None = None
    # Added around each caption as it is (e.g. a trigger word: prefix="sks, ").
    prefix: str = ""
    suffix: str = ""
    # Capitalise the first letter and end with a full stop, as alt text is written.
    sentence_case: bool = False
    # A progress bar on stderr: images/s and time left.
    progress: bool = True

    def validate(self) -> CollectionConfig:
        """Raise ValueError saying the allowed values; returns self."""
        check_int("batch_size", self.batch_size, 1, MAX_BATCH_SIZE)
        if self.num_workers is not None:
            check_int("num_workers", self.num_workers, 0, MAX_WORKERS)
        for name in ("prefix", "suffix"):
            value = getattr(self, name)
            if not isinstance(value, str) or len(value) > MAX_AFFIX_LENGTH:
                raise ValueError(f"{name} must be text of at most {MAX_AFFIX_LENGTH} characters")
            if "\n" in value or "\r" in value:
                raise ValueError(f"{name} must be one line of text, got {value!r}")
        if self.output is not None:
            RowFile(self.output)  # refuses a suffix other than .jsonl / .csv
        if self.sidecar is not None:
            suffix = self.sidecar
            if not (
                isinstance(suffix, str)
                and 2 <= len(suffix) <= 16
                and suffix.startswith(".")
                and suffix[1:].replace("_", "").replace("-", "").replace(".", "").isalnum()
            ):
                raise ValueError(
                    f"sidecar must be a file suffix such as .txt (a dot, then letters, digits, "
                    f"'-', '_' or '.'; at most 16 characters), got {suffix!r}"
                )
            if suffix.lower() in Image.registered_extensions():
                raise ValueError(
                    f"sidecar {suffix} is an image format: caption files would replace images; "
                    "choose a text suffix such as .txt"
                )
        return self

    def finish_text(self, text: str) -> str:
        """The caption as written out: sentence case if asked, then prefix and suffix."""
        if self.sentence_case and text:
            text = text[0].upper() + text[1:]
            if text[-1] not in ".!?":
                text += "."
        return f"{self.prefix}{text}{self.suffix}"


@dataclass
class CollectionSummary:
    total: int  # images asked for (files in folders that are not images included)
    already_done: int  # skipped: captioned by an earlier run
    captioned: int
    failed: int
    not_images: int  # files found in folders that are not images, skipped

    def __str__(self) -> str:
        parts = [f"captioned {self.captioned} of {self.total}"]
        if self.already_done:
            parts.append(f"{self.already_done} already done")
        if self.failed:
            parts.append(f"{self.failed} failed")
        if self.not_images == 1:
            parts.append("skipped 1 file that is not an image")
        elif self.not_images:
            parts.append(f"skipped {self.not_images} files that are not images")
        return ", ".join(parts)


@dataclass
class LoadedBatch:
    """Decoded, preprocessed images of one batch, with what happened to those that failed."""

    indices: list[int]  # positions in the job's share, in order
    pixels: np.ndarray | None  # (loaded, 3, H, W) of those that loaded
    loaded: list[int]
    images: list[Image.Image | None]  # for heatmaps, when asked for
    errors: dict[int, str]
    not_images: list[int]


class _LoadImages:
    """Runs in the loader processes: files -> normalised pixels (and the image to draw heatmaps
    on, when kept), a batch a call."""

    def __init__(self, items: list[ImageItem], preprocess: Preprocess, keep_images: bool):
        self.items = items
        self.preprocess = preprocess
        self.image_side = ATTENTION_IMAGE_SIDE if keep_images else None

    def __call__(self, indices: list[int]) -> LoadedBatch:
        return _collate([(index, *self.load(index)) for index in indices])

    def load(self, index: int) -> tuple[PreparedImage | None, str | None]:
        """The image prepared, or its error; neither for a file found in a folder that is not
        an image (skipped, not a failure)."""
        item = self.items[index]
        if item.error is not None:
            return None, item.error
        try:
            return self.preprocess.prepare(item.source, image_side=self.image_side), None
        except UnsupportedImageError as error:
            return None, None if item.in_folder else str(error)
        except ImageLoadError as error:
            return None, str(error)


def _collate(loaded: list[tuple[int, PreparedImage | None, str | None]]) -> LoadedBatch:
    batch = LoadedBatch([], None, [], [], {}, [])
    pixels = []
    for index, prepared, error in loaded:
        batch.indices.append(index)
        if prepared is not None:
            batch.loaded.append(index)
            pixels.append(prepared.pixels)
            batch.images.append(prepared.image)
        elif error is not None:
            batch.errors[index] = error
        else:
            batch.not_images.append(index)
    batch.pixels = np.stack(pixels) if pixels else None
    return batch


def _alone() -> None:
    """The barrier of a job that runs in one process."""


def _sum_alone(counts: list[int]) -> list[int]:
    return counts


class CollectionJob:
    """One pass over a collection, in one process or as one rank of several.

    `start` -> this rank's share; `loader(share)` -> batches; `process(batch)` for each;
    `finish` -> the summary. Ranks take every world-th image of the same list of images left to
    do, and each appends to its own row file, merged into the output by rank 0 at the end."""

    def __init__(
        self,
        model: Captioner,
        sources: Iterable[ImageItem | str | Path],
        config: CollectionConfig | None = None,
        on_row: Callable[[Row], None] | None = None,
        **generation_options: Any,
    ):
        self.model = model
        self.config = (config or CollectionConfig()).validate()
        self.generation = model.generation_config(**generation_options)
        self.on_row = on_row
        output, attention_dir = self.config.output, self.config.attention_dir
        self.outputs = JobOutputs(output, self.config.sidecar, attention_dir, self.config.overwrite)
        self.items = self.outputs.leave_out(_items(sources, self.config.recursive))
        self.attention_folders = attention_folders(self.items) if attention_dir is not None else {}
        # Taken where the job is built, so that a second job on the same output is refused
        # before any work; a file that is not a captioner output too.
        self.outputs.claim()
        self.share: list[ImageItem] = []  # this rank's images, from start()
        self.rank = 0
        self.counts = {"captioned": 0, "failed": 0, "not_images": 0}
        self.already_done = 0
        self.bar: Any = None  # this rank's progress bar (tqdm), from start()

    # ---- the three steps -------------------------------------------------------------------
    def start(
        self, rank: int = 0, world: int = 1, barrier: Callable[[], None] = _alone
    ) -> list[ImageItem]:
        """Find what is left to do, clean up the output, open this rank's file: its share."""
        done = self.outputs.done(self.items)
        todo = [item for item in self.items if item.name not in done]
        self.already_done = len(self.items) - len(todo)
        barrier()  # every rank has read the files before any is changed
        self.outputs.open(rank, world, barrier)
        self.share = todo[rank::world]
        self.rank = rank
        from tqdm import tqdm

        self.bar = tqdm(
            total=len(self.share),
            unit="img",
            file=sys.stderr,
            disable=not self.config.progress or rank != 0 or len(self.share) < 2,
            smoothing=0.1,
        )
        return self.share

    def loader(self, share: list[ImageItem], fresh_workers: bool = False) -> BatchLoader:
        """Batches of `share`, decoded in worker processes. `fresh_workers` starts them from a
        clean server process instead of forking this one: for a process that runs threads of
        its own (a distributed rank's process group), where a forked child can wait forever on
        a lock one of them held at the fork (CPython gh-112275, fixed in later releases)."""
        workers = self.config.num_workers
        workers = default_workers() if workers is None else workers
        start_method = None
        if workers and fresh_workers:
            methods = multiprocessing.get_all_start_methods()
            start_method = "forkserver" if "forkserver" in methods else "spawn"
        load = _LoadImages(share, self.model.preprocess, bool(self.attention_folders))
        return BatchLoader(load, len(share), self.config.batch_size, workers, start_method)

    def encode(self, batch: LoadedBatch) -> np.ndarray | None:
        """The encoder's tokens of the batch's images that loaded (None when none did)."""
        if batch.pixels is None:
            return None
        return self.model.encode(batch.pixels)

    def process(self, batch: LoadedBatch, features: np.ndarray | None = None) -> list[Row]:
        """Caption one batch (from its encoder `features` when `encode` already ran) and write
        its rows (flushed) and sidecars."""
        rows: dict[int, Row] = {
            index: {"image": self.share[index].name, "error": error}
            for index, error in batch.errors.items()
        }
        if batch.pixels is not None:
            features = self.encode(batch) if features is None else features
            assert features is not None  # the batch has pixels
            want_attention = bool(self.attention_folders)
            captions = self.model.generate_from_features(features, self.generation, want_attention)
            for index, caption, image in zip(batch.loaded, captions, batch.images):
                rows[index] = self._caption_row(self.share[index], caption, image)
        ordered = [rows[index] for index in batch.indices if index in rows]
        self.outputs.append(ordered)
        if self.on_row is not None:
            for row in ordered:
                self.on_row(row)
        self.counts["captioned"] += len(batch.loaded)
        self.counts["failed"] += len(batch.errors)
        self.counts["not_images"] += len(batch.not_images)
        self.bar.update(len(batch.indices))
        return ordered

    def finish(
        self,
        barrier: Callable[[], None] = _alone,
        sum_over_ranks: Callable[[list[int]], list[int]] = _sum_alone,
    ) -> CollectionSummary:
        """Close this rank's file; rank 0 merges the per-rank files into the output."""
        self.bar.close()
        self.outputs.close(self.rank, barrier)
        self.release()
        captioned, failed, not_images = sum_over_ranks(
            [self.counts["captioned"], self.counts["failed"], self.counts["not_images"]]
        )
        return CollectionSummary(len(self.items), self.already_done, captioned, failed, not_images)

    def run(self) -> CollectionSummary:
        """The whole job in this process (the loader's workers aside)."""
        try:
            share = self.start()
        except BaseException:
            self.release()
            raise
        try:
            pipelined(self.loader(share), self.encode, self.process)
        finally:
            summary = self.finish()
        return summary

    def release(self) -> None:
        """Let another job write the output (finish() does; for a job that does not run)."""
        self.outputs.release()

    # ---- helpers ---------------------------------------------------------------------------
    def _caption_row(self, item: ImageItem, caption: Caption, image: Image.Image | None) -> Row:
        ranked = [caption, *caption.alternatives]
        texts = [self.config.finish_text(c.text) for c in ranked]
        row: Row = {
            "image": item.name,
            "caption": texts[0],
            "tokens": caption.tokens,
            "score": round(caption.score, 4),
        }
        if len(ranked) > 1:
            row["captions"] = texts
            row["scores"] = [round(c.score, 4) for c in ranked]
        if self.outputs.sidecars is not None:
            self.outputs.sidecars.write(item, texts)
        if image is not None:
            from captioner.attention import save_token_heatmaps

            # images are kept only with attention_dir, and then the captions have attention
            assert self.config.attention_dir is not None and caption.attention is not None
            folder = self.config.attention_dir / self.attention_folders[item.name]
            save_token_heatmaps(image, caption.tokens, caption.attention, folder)
            row["attention_dir"] = str(folder)
        return row


def pipelined(
    items: Iterable[Item], first: Callable[[Item], Partial], then: Callable[[Item, Partial], object]
) -> None:
    """`then(item, first(item))` for each item in order, `first` of the next item running in a
    thread meanwhile. For the encoder (`first`) and decoding (`then`): ONNX Runtime releases
    the GIL, and decoding leaves cores idle that the encoder then uses
    (bench/collection_throughput.py measures what that gains)."""
    with ThreadPoolExecutor(1, thread_name_prefix="captioner-pipeline") as worker:
        previous: tuple[Item, Future[Partial]] | None = None
        for item in items:
            started = worker.submit(first, item)
            if previous is not None:
                then(previous[0], previous[1].result())
            previous = (item, started)
        if previous is not None:
            then(previous[0], previous[1].result())


def caption_collection(
    model: Captioner,
    sources: Iterable[ImageItem | str | Path],
    config: CollectionConfig | None = None,
    on_row: Callable[[Row], None] | None = None,
    **generation_options: Any,
) -> CollectionSummary:
    """Caption every image of `sources` (ImageItems, or files, folders and glob patterns) in this
    process, writing as `config` says; `on_row` also gets each row (captions and errors) in
    order. `generation_options` are GenerationConfig fields (num_beams, num_return_sequences,
    ...), validated like `Captioner.caption`'s. Resumes unless `config.overwrite`."""
    return CollectionJob(model, sources, config, on_row, **generation_options).run()


def attention_folders(items: list[ImageItem]) -> dict[str, PurePosixPath]:
    """Each image's heatmap folder, relative to the attention folder: its path relative to the
    folder that holds all the images, less the suffix (`a/x.jpg`, `b/x.jpg` -> `a/x`, `b/x`;
    `x.jpg` beside `x.png` keeps the suffix)."""
    files = [item.path.resolve() for item in items if item.path is not None]
    common = Path(os.path.commonpath([f.parent for f in files])) if files else Path("/")
    folders: dict[str, PurePosixPath] = {}
    taken: set[PurePosixPath] = set()
    for item in items:
        if item.path is not None:
            relative = PurePosixPath(item.path.resolve().relative_to(common).as_posix())
        else:
            relative = PurePosixPath(*[p for p in PurePosixPath(item.name).parts if p not in "/.."])
        folder = relative.with_suffix("") if relative.suffix else relative
        if folder in taken:
            folder = relative
        number = 2
        while folder in taken:  # `y.jpg` took `y`, and this is a file named `y`
            folder = relative.with_name(f"{relative.name}~{number}")
            number += 1
        taken.add(folder)
        folders[item.name] = folder
    return folders


def _items(sources: Iterable[ImageItem | str | Path], recursive: bool) -> list[ImageItem]:
    sources = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
    items = []
    for source in sources:
        items += [source] if isinstance(source, ImageItem) else find_images([source], recursive)
    return unique(items)


__all__ = [
    "CollectionConfig",
    "CollectionJob",
    "CollectionSummary",
    "attention_folders",
    "caption_collection",
]
