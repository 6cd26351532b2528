"""Which images a collection job captions: files, folders, glob patterns, lists of paths and
caption datasets, each with the name its output row is keyed by (and resumed by)."""

from __future__ import annotations

import fnmatch
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
    # Why it cannot be read, known before loading (a sub-folder that cannot be listed).
    error: str | None = None

    @property
    def source(self) -> Path | bytes:
        if self.data is not None:
            return self.data
        assert self.path is not None  # an item has its file or its bytes
        return self.path


def find_images(sources: Iterable[str | Path], recursive: bool = False) -> list[ImageItem]:
    """Files as given, the files of folders (of their sub-folders too with `recursive`; hidden
    ones left out) and the matches of glob patterns (`**` descends). A path that does not exist
    is kept, so that it is reported as a per-image error like any other unreadable image, as is
    a sub-folder that cannot be listed. Symbolic links to folders are not descended into (a
    link back up would never end); named or matched, a link is followed once.
    ValueError for a pattern that matches nothing."""
    items: list[ImageItem] = []
    for source in sources:
        text = str(source)
        path = Path(text).expanduser()
        if os.path.isdir(path):  # False, not PermissionError, in a folder that is locked
            items += _walk(path, recursive)
        elif not os.path.lexists(path) and any(c in text for c in GLOB_CHARACTERS):
            matches = _glob(os.path.expanduser(text))
            if not matches:
                raise ValueError(f"no file matches the pattern {text!r}")
            for match in matches:
                matched = Path(match)
                items += _walk(matched, recursive) if os.path.isdir(matched) else [_file(match)]
        else:
            items.append(_file(text))
    return unique(items)


def _glob(pattern: str) -> list[str]:
    """`glob.glob(pattern, recursive=True)`, sorted, except that `**` does not follow symbolic
    links to folders (Python 3.11's does, forever round a loop)."""
    if "**" not in pattern:
        return sorted(glob.glob(pattern))
    parts = Path(pattern).parts
    fixed = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    root = Path(*parts[:fixed]) if fixed else Path(".")
    wanted = parts[fixed:]
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in [*dirs, *files]:
            path = Path(folder) / name
            if _glob_matches(wanted, path.relative_to(root).parts):
                found.append(str(path) if fixed else os.path.relpath(path))
    return sorted(found)


def _glob_matches(pattern: tuple[str, ...], parts: tuple[str, ...]) -> bool:
    """Whether a relative path's parts match a pattern's (`**`: any number of folders; a hidden
    name only matches a part that starts with a dot, as in glob)."""
    if not pattern:
        return not parts
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return any(_glob_matches(rest, parts[i:]) for i in range(len(parts) + 1))
    return (
        bool(parts)
        and (head.startswith(".") or not parts[0].startswith("."))
        and fnmatch.fnmatchcase(parts[0], head)
        and _glob_matches(rest, parts[1:])
    )


def read_list(path: str | Path) -> list[str]:
    """The sources in a list file: one path, folder or pattern a line (ended by "\n" or "\r\n"
    only: a name may hold any other character, U+2028 included); spaces and tabs around a line,
    blank lines and lines starting with # are left out. A name that is not UTF-8 is read as its
    bytes. Relative paths are taken from the current folder, as on the command line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as error:
        raise ValueError(f"cannot read the list {path}: {error.strerror}") from None
    lines = [line.removesuffix("\r").strip(" \t") for line in text.split("\n")]
    return [line for line in lines if line and not line.startswith("#")]


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


def dataset_files(source: str | Path) -> list[Path]:
    """The caption files `load_records` reads for `source` (a folder's captions.jsonl,
    dataset_*.json, captions.txt, results.csv; or the file itself): never an output."""
    path = Path(source).expanduser()
    if not path.is_dir():
        return [path] if path.is_file() else []
    candidates = [path / "captions.jsonl", *path.glob("dataset_*.json")]
    candidates += [path / "captions.txt", path / "results.csv"]
    return [candidate for candidate in candidates if candidate.is_file()]


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

    def unreadable(error: OSError) -> None:  # a folder that cannot be listed: an error row
        path = Path(error.filename)
        name = f"{path.relative_to(folder).as_posix()}/" if path != folder else f"{folder}/"
        items.append(
            ImageItem(name, path, error=f"cannot read the folder {path}: {error.strerror}")
        )

    for root, dirs, files in os.walk(folder, onerror=unreadable):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if recursive else []
        for name in sorted(f for f in files if not f.startswith(".")):
            path = Path(root) / name
            items.append(ImageItem(path.relative_to(folder).as_posix(), path, in_folder=True))
    return sorted(items, key=lambda item: item.name)
