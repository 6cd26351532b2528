"""Which images a collection job captions: files, folders, glob patterns, lists of paths and
caption datasets, each with the name its output row is keyed by (and resumed by)."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

GLOB_CHARACTERS = "*?["


@dataclass(frozen=True)
class ImageItem:
    """One image to caption.

    `name` keys its output row: the path relative to the folder it was found in, else the path
    as given (or a dataset's image id for images held as bytes)."""

    name: str
    path: Path | None = None
    data: bytes | None = None  # encoded image bytes (hub datasets), when there is no file
    # Found by walking a folder: a file there that is not an image is skipped and counted, not
    # reported as an error (a folder of photos often holds notes, sidecars, thumbnails' indexes).
    in_folder: bool = False

    @property
    def source(self) -> Path | bytes:
        if self.data is not None:
            return self.data
        assert self.path is not None  # an item has its file or its bytes
        return self.path


def find_images(sources: Iterable[str | Path], recursive: bool = False) -> list[ImageItem]:
    """Files as given, the files of folders (of their sub-folders too with `recursive`; hidden
    ones left out) and the matches of glob patterns (`**` descends). A path that does not exist
    is kept, so that it is reported as a per-image error like any other unreadable image."""
    items: list[ImageItem] = []
    for source in sources:
        text = str(source)
        path = Path(text).expanduser()
        if path.is_dir():
            items += _walk(path, recursive)
        elif not path.exists() and any(c in text for c in GLOB_CHARACTERS):
            for match in sorted(glob.glob(os.path.expanduser(text), recursive=True)):
                matched = Path(match)
                items += _walk(matched, recursive) if matched.is_dir() else [_file(match)]
        else:
            items.append(_file(text))
    return unique(items)


def read_list(path: str | Path) -> list[str]:
    """The sources in a list file: one path, folder or pattern a line; blank lines and lines
    starting with # are left out. Relative paths are taken from the current folder, as on the
    command line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read the list {path}: {error}") from None
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def dataset_images(source: str | Path, split: str | None = None) -> list[ImageItem]:
    """The images of a caption dataset in any format `load_records` reads, named by their path
    relative to the dataset's folder (or by image id when the dataset holds the bytes)."""
    from captioner.data import load_records

    root = Path(source) if Path(source).is_dir() else Path(source).parent
    records = load_records(source, split)
    if not records:
        where = f"split {split!r} of {source}" if split else str(source)
        raise ValueError(f"no images in {where}")
    items = []
    for record in records:
        if isinstance(record.image, bytes):
            items.append(ImageItem(record.image_id, data=record.image))
        else:
            path = Path(record.image)
            name = path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
            items.append(ImageItem(name, path))
    return unique(items)


def unique(items: Iterable[ImageItem]) -> list[ImageItem]:
    """Each file once (the first way it was reached), in order. Two different files with one name
    are refused: their rows could not be told apart, and resuming would skip one of them."""
    kept: dict[object, ImageItem] = {}
    names: dict[str, ImageItem] = {}
    for item in items:
        key = item.path.resolve() if item.path is not None else ("data", item.name)
        if key in kept:
            continue
        if item.name in names:
            first = names[item.name]
            raise ValueError(
                f"{first.path or first.name} and {item.path or item.name} would both be named "
                f"{item.name!r} in the output: caption their folders separately or give the "
                "folder that holds both"
            )
        kept[key] = names[item.name] = item
    return list(kept.values())


def _file(text: str) -> ImageItem:
    return ImageItem(text, Path(text).expanduser())


def _walk(folder: Path, recursive: bool) -> list[ImageItem]:
    """The files of `folder` in sorted order, named relative to it."""
    items = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if recursive else []
        for name in sorted(f for f in files if not f.startswith(".")):
            path = Path(root) / name
            items.append(ImageItem(path.relative_to(folder).as_posix(), path, in_folder=True))
    return sorted(items, key=lambda item: item.name)
