"""A disk cache of encoder grids, so training epochs never re-run the frozen encoder.

Layout: `<cache_root>/<digest of encoder + preprocessing>/` holds `features.npy` (fp16, rows of
(tokens, dim), opened memory-mapped) and `index.json` (the encoder key and one fingerprint per
row, from the image's content). A different encoder or preprocessing lands in another folder; a
changed image gets a new fingerprint and is re-encoded; rows already present are reused.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from captioner.cache import ENCODE_WORKERS, features_dir
from captioner.data import CaptionRecord
from captioner.encoders import ImageEncoder
from captioner.images import ImageInput, ImageLoadError
from captioner.transforms import CENTRE, CropView

log = logging.getLogger(__name__)

FEATURES_FILE = "features.npy"
INDEX_FILE = "index.json"


@dataclass(frozen=True)
class ImageSource:
    """What the cache needs to know of an image: a stable id, where its bytes are, and which
    view of it to encode: its left-right mirror image, and another square than the centre one
    (`CropView`), both training augmentations."""

    image_id: str
    image: ImageInput
    mirrored: bool = False
    view: CropView = CENTRE


def fingerprint(source: ImageSource) -> str:
    """Names an image by its content: a copied or touched dataset keeps its cache, an edited
    image is re-encoded. Hashing is cheap next to encoding (0.6 s for Flickr8k's 7000 photos),
    and each file is hashed once per process (memoised on path, size and mtime)."""
    image = source.image
    name = f"{source.image_id}|mirrored" if source.mirrored else source.image_id
    if source.view != CENTRE:  # the centre square keeps the names caches were made with
        name = f"{name}|crop{source.view.position:g}x{source.view.zoom:g}"
    if isinstance(image, (str, os.PathLike)):
        try:
            stat = Path(image).stat()
        except OSError:
            return f"{name}|missing"
        return f"{name}|{_file_digest(str(image), stat.st_size, stat.st_mtime_ns)}"
    if isinstance(image, (bytes, bytearray)):
        return f"{name}|{_digest(image)}"
    return name


def image_source(
    record: CaptionRecord, mirrored: bool = False, view: CropView = CENTRE
) -> ImageSource:
    return ImageSource(record.image_id, record.image, mirrored, view)


def record_key(record: CaptionRecord, mirrored: bool = False, view: CropView = CENTRE) -> str:
    """The cache key of a record's image (or of one of its augmented views)."""
    return fingerprint(image_source(record, mirrored, view))


def _digest(data: bytes | bytearray) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


@functools.lru_cache(maxsize=1 << 20)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    try:
        return _digest(Path(path).read_bytes())
    except OSError:
        return "missing"


class FeatureCache:
    """Read side: `cache[fingerprint]` gives a (tokens, dim) float16 array."""

    def __init__(self, directory: Path):
        self.directory = directory
        index = json.loads((directory / INDEX_FILE).read_text())
        self.encoder_key: str = index["encoder_key"]
        self.rows: dict[str, int] = {key: i for i, key in enumerate(index["fingerprints"])}
        self.failed: list[str] = index.get("failed", [])
        self.array = np.load(directory / FEATURES_FILE, mmap_mode="r")
        if len(self.array) != len(self.rows):
            raise ValueError(f"{directory}: index and features disagree; rebuild the cache")

    def __contains__(self, key: str) -> bool:
        return key in self.rows

    def __getitem__(self, key: str) -> np.ndarray:
        return self.array[self.rows[key]]

    def __len__(self) -> int:
        return len(self.rows)


def cached_records(records: Sequence[CaptionRecord], cache: FeatureCache) -> list[CaptionRecord]:
    """The records whose image made it into the cache (unreadable images were skipped)."""
    kept = [r for r in records if record_key(r) in cache]
    if len(kept) < len(records):
        log.warning(
            "%d of %d images have no features and are skipped",
            len(records) - len(kept),
            len(records),
        )
    return kept


def cache_dir(cache_root: str | Path, encoder: ImageEncoder) -> Path:
    digest = hashlib.sha1(encoder.cache_key.encode()).hexdigest()[:16]
    return Path(cache_root) / digest


class _Pixels(Dataset):
    """Decodes and preprocesses images in DataLoader workers; a bad image yields its error."""

    def __init__(self, sources: Sequence[ImageSource], encoder: ImageEncoder):
        self.sources = sources
        self.preprocess = encoder.preprocess

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | str]:
        source = self.sources[i]
        try:
            prepared = self.preprocess.prepare(
                source.image, mirrored=source.mirrored, view=source.view
            )
        except ImageLoadError as error:
            return i, str(error)
        return i, torch.from_numpy(prepared.pixels)


def _collate(items: list[tuple[int, torch.Tensor | str]]) -> list[tuple[int, torch.Tensor | str]]:
    return items


@dataclass
class _Encoded:
    """What one build encoded: its rows of grids, their fingerprints, and the images that
    could not be read."""

    rows: list[np.ndarray] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def build_cache(
    encoder: ImageEncoder,
    sources: Iterable[ImageSource],
    cache_root: str | Path | None = None,
    batch_size: int = 32,
    num_workers: int = ENCODE_WORKERS,
    progress: bool = True,
) -> FeatureCache:
    """Encode every image not already cached under this encoder; reuse the rest. The global
    random state is left alone, so a seeded run is the same whether or not it filled the cache.
    `cache_root` None: the user's cache folder (`captioner.cache.features_dir`)."""
    directory = cache_dir(features_dir(cache_root), encoder)
    old = _reusable_cache(directory, encoder)
    wanted = {fingerprint(s): s for s in sources}
    todo = [s for key, s in wanted.items() if old is None or key not in old]
    if old is not None and not todo:
        return old
    encoded = _encode(encoder, todo, batch_size, num_workers, progress)
    return _write_cache(directory, encoder, old, encoded)


def _reusable_cache(directory: Path, encoder: ImageEncoder) -> FeatureCache | None:
    """The cache already in `directory` if it is readable and of this encoder."""
    if not (directory / INDEX_FILE).is_file():
        return None
    try:
        old = FeatureCache(directory)
    except (ValueError, OSError, KeyError) as error:
        log.warning("rebuilding the feature cache: %s", error)
        return None
    return old if old.encoder_key == encoder.cache_key else None  # never mix encoders


def _encode(
    encoder: ImageEncoder,
    todo: list[ImageSource],
    batch_size: int,
    num_workers: int,
    progress: bool,
) -> _Encoded:
    """Run the encoder over `todo` on the device its weights are on, decoded in `num_workers`
    processes meanwhile; the images that cannot be read are logged and skipped."""
    device = next(encoder.parameters()).device
    loader = DataLoader(
        _Pixels(todo, encoder),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_collate,
        generator=torch.Generator(),  # its worker seed is drawn from here, not the global state
    )
    encoded = _Encoded()
    bar = tqdm(total=len(todo), desc="encoding images", unit="img", disable=not progress)
    for items in loader:
        good = [(i, pixels) for i, pixels in items if isinstance(pixels, torch.Tensor)]
        for i, message in items:
            if isinstance(message, str):
                encoded.failed.append(todo[i].image_id)
                log.warning("skipping image %s: %s", todo[i].image_id, message)
        if good:
            pixels = torch.stack([pixels for _, pixels in good]).to(device)
            encoded.rows.append(encoder(pixels).tokens.to(torch.float16).cpu().numpy())
            encoded.keys += [fingerprint(todo[i]) for i, _ in good]
        bar.update(len(items))
    bar.close()
    return encoded


def _write_cache(
    directory: Path, encoder: ImageEncoder, old: FeatureCache | None, encoded: _Encoded
) -> FeatureCache:
    """The old rows and the new ones in one file, written then renamed: an interrupted build
    never leaves a half-written cache behind."""
    keys = list(old.rows) if old is not None else []
    directory.mkdir(parents=True, exist_ok=True)
    shape = (len(keys) + len(encoded.keys), encoder.grid_h * encoder.grid_w, encoder.dim)
    tmp = directory / (FEATURES_FILE + ".tmp")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=shape)
    if old is not None:
        out[: len(keys)] = old.array
    position = len(keys)
    for rows in encoded.rows:
        out[position : position + len(rows)] = rows
        position += len(rows)
    out.flush()
    del out
    os.replace(tmp, directory / FEATURES_FILE)
    index = {
        "encoder_key": encoder.cache_key,
        "fingerprints": keys + encoded.keys,
        "failed": encoded.failed,
    }
    (directory / INDEX_FILE).write_text(json.dumps(index))
    if encoded.failed:
        log.warning("%d images could not be read and were skipped", len(encoded.failed))
    return FeatureCache(directory)
