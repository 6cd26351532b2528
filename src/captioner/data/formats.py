"""Caption datasets in the formats people actually have, read into one list of `CaptionRecord`.

Formats (`load_records` tells them apart by path):
- a folder with `captions.jsonl` + `images/` (one JSON object per image: image, image_id, split,
  captions), as in `shared/datasets/flickr8k/`;
- Karpathy's split files `dataset_{flickr8k,flickr30k,coco}.json`, beside an image folder;
- Kaggle's Flickr8k `captions.txt` (CSV `image,caption`) and Flickr30k `results.csv`
  (`image_name| comment_number| comment`), several rows per image;
- Hugging Face datasets: a hub id as `hf:owner/name` (or `hf:owner/name:hf_split`), or a local
  `.parquet` / `.arrow` file holding such a table (image, caption, split, filename columns).

Splits are taken from the source. Sources without one (Kaggle files, tables without a `split`
column) use a Karpathy file found beside them (or passed as `karpathy=`) and otherwise a
`SplitConfig`: a deterministic train/val/test split by a hash of the image id (see splits.py),
logged in one line.

Image ids are the image file's stem wherever there is a file name (`1000092795` for
Flickr30k's `1000092795.jpg`, in every format), so the feature cache is shared across formats;
COCO uses its numeric `cocoid`. Bad rows are counted, skipped and logged, never raised.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from captioner.data.splits import SplitConfig, log_hash_split, same_split

log = logging.getLogger(__name__)

HUB_PREFIX = "hf:"


@dataclass
class CaptionRecord:
    """One image and all its reference captions."""

    image_id: str  # stable key (used for the feature cache)
    image: Path | bytes  # a file path, or encoded image bytes (hub datasets)
    captions: list[str]  # non-empty, stripped
    split: str  # "train" / "dev" / "val" / "test" / "restval", as the source says


def load_records(
    source: str | Path,
    split: str | None = None,
    *,
    image_root: str | Path | None = None,
    karpathy: str | Path | None = None,
    splits: SplitConfig | None = None,
) -> list[CaptionRecord]:
    """The records of `source` (any format above), only those of `split` if given.

    `image_root` overrides where image files are looked for (Karpathy and Kaggle formats);
    `karpathy` names a Karpathy split file for Kaggle files (one beside them is found alone);
    `splits` shares out the images of a source without splits (default: `SplitConfig()`).
    """
    text = str(source)
    splits = splits or SplitConfig()
    if text.startswith(HUB_PREFIX):
        records = load_hub(text[len(HUB_PREFIX) :], splits)
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such dataset file or folder")
        records = _load_path(path, image_root, karpathy, splits)
    if split is None:
        return records
    return [record for record in records if same_split(record.split, split)]


def _load_path(
    path: Path, image_root: str | Path | None, karpathy: str | Path | None, splits: SplitConfig
) -> list[CaptionRecord]:
    if path.is_dir():
        if (path / "captions.jsonl").is_file():
            return load_jsonl(path, splits)
        found = sorted(path.glob("dataset_*.json"))
        if len(found) == 1:
            return load_karpathy(found[0], image_root)
        for name in ("captions.txt", "results.csv"):
            if (path / name).is_file():
                return load_kaggle(path / name, karpathy, image_root, splits)
        raise ValueError(
            f"{path}: no captions.jsonl, single dataset_*.json, captions.txt or results.csv inside"
        )
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return load_jsonl(path, splits)
    if suffix == ".json":
        return load_karpathy(path, image_root)
    if suffix in (".txt", ".csv"):
        return load_kaggle(path, karpathy, image_root, splits)
    if suffix in (".parquet", ".arrow"):
        return load_table(path, splits)
    raise ValueError(
        f"{path}: not a dataset format we read (captions.jsonl folder, dataset_*.json, "
        "captions.txt, results.csv, .parquet, .arrow, hf:<hub id>)"
    )


@dataclass
class _Tally:
    """What a loader skipped, logged once at the end; the images without a split of their own
    are shared out by `splits` then."""

    source: str
    splits: SplitConfig = field(default_factory=SplitConfig)
    bad_rows: int = 0
    missing_images: int = 0
    empty_captions: int = 0
    without_captions: int = 0
    outside_split_file: int = 0
    records: list[CaptionRecord] = field(default_factory=list)

    def add(self, image_id: str, image: Path | bytes, captions: list, split: str | None) -> None:
        """An image with its captions; `split` None: the source gives it none."""
        cleaned = [text.strip() for text in captions if isinstance(text, str) and text.strip()]
        self.empty_captions += len(captions) - len(cleaned)
        if not cleaned:
            self.without_captions += 1
        elif isinstance(image, Path) and not image.is_file():
            self.missing_images += 1
        else:
            self.records.append(CaptionRecord(image_id, image, cleaned, split or ""))

    def finish(self) -> list[CaptionRecord]:
        self._share_out()
        skipped = {
            "bad rows": self.bad_rows,
            "image files missing": self.missing_images,
            "empty captions dropped": self.empty_captions,
            "images without captions dropped": self.without_captions,
            "images not in the split file dropped": self.outside_split_file,
        }
        if self.missing_images and not self.records:
            raise FileNotFoundError(
                f"{self.source}: none of the {self.missing_images} image files exist "
                "(pass image_root= to say where the images are)"
            )
        if self.outside_split_file and not self.records:
            raise ValueError(f"{self.source}: none of its images are in the Karpathy split file")
        details = ", ".join(f"{count} {what}" for what, count in skipped.items() if count)
        log.log(
            logging.WARNING if details else logging.INFO,
            "%s: %d records%s",
            self.source,
            len(self.records),
            f" ({details})" if details else "",
        )
        return self.records

    def _share_out(self) -> None:
        unsplit = [record for record in self.records if not record.split]
        for record in unsplit:
            record.split = self.splits.split_of(record.image_id)
        if unsplit:
            log_hash_split(self.source, [record.split for record in unsplit], self.splits)


def load_jsonl(path: str | Path, splits: SplitConfig | None = None) -> list[CaptionRecord]:
    """A .jsonl file, or a folder with captions.jsonl; image paths are relative to its folder.
    Rows without a `split` are shared out by `splits`."""
    path = Path(path)
    if path.is_dir():
        path = path / "captions.jsonl"
    folder = path.parent
    tally = _Tally(str(path), splits or SplitConfig())
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                image = folder / row["image"]
                image_id = str(row.get("image_id") or Path(row["image"]).stem)
                captions = row["captions"]
                split = row.get("split")
            except (ValueError, KeyError, TypeError, AttributeError):
                tally.bad_rows += 1
                continue
            if not isinstance(captions, list):
                tally.bad_rows += 1
                continue
            tally.add(image_id, image, captions, str(split) if split else None)
    return tally.finish()


# Where image folders sit relative to a caption file, in the layouts these datasets ship with.
_IMAGE_FOLDERS = (
    ".",
    "images",
    "Images",
    "flickr30k-images",
    "flickr30k_images",
    "flickr30k_images/flickr30k_images",
    "Flicker8k_Dataset",
    "Flickr8k_Dataset",
)


def _image_root(base: Path, example: str | None, image_root: str | Path | None) -> Path:
    """`image_root` if given, else the first usual folder under `base` that holds `example`."""
    if image_root is not None:
        return Path(image_root).expanduser()
    for name in _IMAGE_FOLDERS:
        if example is not None and (base / name / example).is_file():
            return base / name
    return base


def load_karpathy(path: str | Path, image_root: str | Path | None = None) -> list[CaptionRecord]:
    """Karpathy's dataset_*.json; COCO entries' `filepath` (e.g. val2014) is under image_root."""
    path = Path(path)
    tally = _Tally(str(path))
    try:
        images = json.loads(path.read_text(encoding="utf-8"))["images"]
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: not a Karpathy split file ({error})") from None
    entries = []
    for entry in images:
        try:
            relative = str(Path(entry.get("filepath") or "") / entry["filename"])
            captions = [s.get("raw") or " ".join(s.get("tokens", [])) for s in entry["sentences"]]
            image_id = str(entry["cocoid"]) if "cocoid" in entry else Path(entry["filename"]).stem
            entries.append((image_id, relative, captions, str(entry["split"])))
        except (KeyError, TypeError, AttributeError):
            tally.bad_rows += 1
    root = _image_root(path.parent, entries[0][1] if entries else None, image_root)
    for image_id, relative, captions, split in entries:
        tally.add(image_id, root / relative, captions, split)
    return tally.finish()


def karpathy_splits(path: str | Path) -> dict[str, str]:
    """Image file name -> split, from a Karpathy split file."""
    images = json.loads(Path(path).read_text(encoding="utf-8"))["images"]
    return {entry["filename"]: entry["split"] for entry in images}


def load_kaggle(
    path: str | Path,
    karpathy: str | Path | None = None,
    image_root: str | Path | None = None,
    splits: SplitConfig | None = None,
) -> list[CaptionRecord]:
    """Kaggle's Flickr8k captions.txt (`image,caption`) or Flickr30k results.csv (`a| n| text`).

    Told apart by the header line. Splits come from `karpathy`, else a dataset_*.json beside
    the file, else `splits`; images the Karpathy file lacks are dropped (Flickr8k's 91 extra
    photos, for one).
    """
    path = Path(path)
    tally = _Tally(str(path), splits or SplitConfig())
    with open(path, encoding="utf-8") as file:
        captions = _kaggle_captions([line.rstrip("\n") for line in file], tally)
    if karpathy is None:
        beside = sorted(path.parent.glob("dataset_*.json"))
        karpathy = beside[0] if len(beside) == 1 else None
    known = karpathy_splits(karpathy) if karpathy is not None else None
    root = _image_root(path.parent, next(iter(captions), None), image_root)
    for name, texts in captions.items():
        if known is not None and name not in known:
            tally.outside_split_file += 1
            continue
        tally.add(Path(name).stem, root / name, texts, known[name] if known else None)
    return tally.finish()


def _kaggle_captions(lines: list[str], tally: _Tally) -> dict[str, list[str]]:
    """Image file name -> its captions, in file order, from the lines of a Kaggle file."""
    captions: dict[str, list[str]] = {}
    pipes = bool(lines) and "|" in lines[0]
    if lines and lines[0].lower().startswith("image"):
        lines = lines[1:]  # the header: "image,caption" or "image_name| comment_number| comment"
    for line in lines:
        if not line.strip():
            continue
        if pipes:
            parts = [part.strip() for part in line.split("|", 2)]
            if len(parts) != 3 or not parts[1].isdigit():
                tally.bad_rows += 1
                continue
            name, caption = parts[0], parts[2]
        else:
            row = next(csv.reader([line]))
            if len(row) < 2:
                tally.bad_rows += 1
                continue
            # An unquoted caption holding commas comes back in pieces.
            name, caption = row[0].strip(), ",".join(row[1:])
        if not name:
            tally.bad_rows += 1
            continue
        captions.setdefault(name, []).append(caption)
    return captions


def load_hub(name: str, splits: SplitConfig | None = None) -> list[CaptionRecord]:
    """A Hugging Face hub dataset, `owner/name` (every hub split) or `owner/name:hub_split`.

    Rows carry their own split in a `split` column where there is one (as in
    nlphuji/flickr_30k_test, whose one hub split holds Karpathy's train/val/test); otherwise the
    hub split's name is the record's split (`splits` shares out a table of neither).
    """
    import datasets

    repo, _, hub_split = name.partition(":")
    loaded = datasets.load_dataset(repo, split=hub_split or None)
    tables = loaded.items() if isinstance(loaded, datasets.DatasetDict) else [(hub_split, loaded)]
    tally = _Tally(HUB_PREFIX + name, splits or SplitConfig())
    for table_split, table in tables:
        if isinstance(table.features.get("image"), datasets.Image):
            table = table.cast_column("image", datasets.Image(decode=False))  # bytes, not PIL
        for row in table:
            _add_table_row(tally, row, table_split or None, None)
    return tally.finish()


def load_table(path: str | Path, splits: SplitConfig | None = None) -> list[CaptionRecord]:
    """A local .parquet or .arrow file of a hub-style table (as `datasets` writes them); rows
    without a `split` are shared out by `splits`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    tally = _Tally(str(path), splits or SplitConfig())
    if path.suffix.lower() == ".parquet":
        batches = pq.ParquetFile(path).iter_batches(batch_size=256)
    else:
        try:
            batches = iter(pa.ipc.open_file(path))  # Arrow IPC file format
        except pa.ArrowInvalid:
            batches = iter(pa.ipc.open_stream(path))  # stream format (`save_to_disk`)
    for batch in batches:
        for row in batch.to_pylist():
            _add_table_row(tally, row, None, path.parent)
    return tally.finish()


def _add_table_row(
    tally: _Tally, row: dict, fallback_split: str | None, folder: Path | None
) -> None:
    """One hub-style row: image (bytes, {bytes, path} or PIL), caption(s), split, file name."""
    try:
        image = _image_value(row["image"], folder)
        captions = next(row[key] for key in ("caption", "captions", "sentences") if key in row)
    except (KeyError, StopIteration, TypeError, ValueError):
        tally.bad_rows += 1
        return
    if isinstance(captions, str):
        captions = [captions]
    if not isinstance(captions, list):
        tally.bad_rows += 1
        return
    filename = row.get("filename") or row.get("file_name")
    key = next((row[k] for k in ("image_id", "img_id", "cocoid") if row.get(k) is not None), None)
    if filename:
        image_id = Path(str(filename)).stem
    elif key is not None:
        image_id = str(key)
    elif isinstance(image, Path):
        image_id = image.stem
    else:  # nothing but the pixels: name the image by its content
        image_id = hashlib.sha1(image).hexdigest()[:16]
    split = row.get("split") or fallback_split
    tally.add(image_id, image, captions, str(split) if split else None)


def _image_value(value: object, folder: Path | None) -> Path | bytes:
    """Encoded bytes, or a path (relative ones against `folder`), from a table's image cell."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, dict):
        if value.get("bytes"):
            return bytes(value["bytes"])
        if value.get("path"):
            path = Path(value["path"])
            return folder / path if folder is not None and not path.is_absolute() else path
        raise ValueError("image cell has neither bytes nor path")
    from PIL import Image

    if isinstance(value, Image.Image):  # a decoded hub image: store it losslessly
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        return buffer.getvalue()
    raise TypeError(f"cannot read an image from a {type(value).__name__}")
