"""Where a collection job's captions go: JSONL or CSV files appended one batch at a time (and
read back to resume), and caption files beside the images.

A row file only ever grows by whole lines, flushed after each batch, so a killed run loses at
most the batch in flight. A line cut off by the kill (no newline at its end) is left out when the
file is read and dropped before anything is appended, so it never breaks the next read.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import tempfile
from itertools import zip_longest
from pathlib import Path
from typing import Any, TextIO

from captioner.collection.inputs import ImageItem

ROW_SUFFIXES = (".jsonl", ".csv")
CSV_COLUMNS = (
    "image",
    "caption",
    "score",
    "tokens",
    "captions",
    "scores",
    "attention_dir",
    "error",
)
# Columns holding lists: JSON-encoded in a CSV cell.
_LIST_COLUMNS = ("tokens", "captions", "scores")

Row = dict[str, Any]


def is_caption(row: Row) -> bool:
    return "error" not in row


class RowFile:
    """A `.jsonl` or `.csv` file of rows, one per image (format from the suffix)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.suffix = self.path.suffix.lower()
        if self.suffix not in ROW_SUFFIXES:
            raise ValueError(f"{self.path}: an output file must end in .jsonl or .csv")
        self._handle: TextIO | None = None

    # ---- reading ---------------------------------------------------------------------------
    def read(self) -> tuple[list[Row], bool]:
        """The rows of its complete lines, and whether a cut-off last line was left out."""
        if not self.path.is_file():
            return [], False
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        try:
            text = data[:end].decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{self.path} is not a UTF-8 text file of captions") from None
        return self._parse(text), end < len(data)

    def _parse(self, text: str) -> list[Row]:
        rows = []
        if self.suffix == ".csv":
            reader = csv.DictReader(io.StringIO(text))
            if reader.fieldnames is not None and tuple(reader.fieldnames) != CSV_COLUMNS:
                self._not_ours(1)
            for row in reader:
                try:
                    rows.append(_from_cells(row))
                except ValueError:
                    self._not_ours(reader.line_num)
        else:
            for number, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    self._not_ours(number)
                if not isinstance(row, dict) or not isinstance(row.get("image"), str):
                    self._not_ours(number)
                rows.append(row)
        return rows

    def _not_ours(self, line: int) -> None:
        raise ValueError(
            f"{self.path} line {line} is not a caption row written by captioner: "
            "pass --overwrite to replace the file, or choose another output"
        )

    # ---- writing ---------------------------------------------------------------------------
    def open(self) -> None:
        """Open for appending (created if missing)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Held open across batches, closed by close().
        self._handle = open(self.path, "a", encoding="utf-8", newline="")  # noqa: SIM115
        if self.suffix == ".csv" and self._handle.tell() == 0:
            self._handle.write(self._encode([], header=True))
            self._handle.flush()

    def append(self, rows: list[Row]) -> None:
        """Write whole lines and flush them, so that they outlive a kill of this process."""
        if rows:
            assert self._handle is not None, "open() first"
            self._handle.write(self._encode(rows))
            self._handle.flush()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def rewrite(self, rows: list[Row]) -> None:
        """Replace the whole file at once (readers see the old one or the new one)."""
        write_atomically(self.path, self._encode(rows, header=True))

    def delete(self) -> None:
        self.path.unlink(missing_ok=True)

    def _encode(self, rows: list[Row], header: bool = False) -> str:
        if self.suffix == ".jsonl":
            return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, CSV_COLUMNS, lineterminator="\n")
        if header:
            writer.writeheader()
        writer.writerows(_to_cells(row) for row in rows)
        return buffer.getvalue()

    # ---- the per-rank files of a job over several processes --------------------------------
    def part(self, rank: int) -> RowFile:
        """The file process `rank` appends to: `captions.part-<rank>.jsonl` beside `captions.jsonl`."""
        return RowFile(self.path.with_name(f"{self.path.stem}.part-{rank}{self.path.suffix}"))

    def parts(self) -> list[RowFile]:
        """Every per-rank file beside this one, by rank (left behind by a killed run, too)."""
        pattern = f"{glob.escape(self.path.stem)}.part-*{self.path.suffix}"
        found = []
        for path in self.path.parent.glob(pattern):
            rank = path.name[len(self.path.stem) + len(".part-") : -len(self.path.suffix)]
            if rank.isdigit():
                found.append((int(rank), RowFile(path)))
        return [part for _, part in sorted(found, key=lambda found: found[0])]


def merge_rows(*groups: list[Row]) -> list[Row]:
    """One row per image, in the order first seen: its caption row if it has one, else its last
    error row (errors are retried, so a later one is newer)."""
    chosen: dict[str, Row] = {}
    for rows in groups:
        for row in rows:
            old = chosen.get(row["image"])
            if old is None or not is_caption(old):
                chosen[row["image"]] = row
    return list(chosen.values())


def interleave(groups: list[list[Row]]) -> list[Row]:
    """Rank 0's first row, rank 1's first row, ...: the order of the list the ranks shared out
    round-robin."""
    return [row for batch in zip_longest(*groups) for row in batch if row is not None]


class Sidecars:
    """A caption file beside each image: `photo.jpg` -> `photo.txt` for the suffix `.txt`."""

    def __init__(self, suffix: str):
        self.suffix = suffix

    def path(self, item: ImageItem) -> Path:
        assert item.path is not None  # sidecars are for image files
        return item.path.with_suffix(self.suffix)

    def exists(self, item: ImageItem) -> bool:
        return self.path(item).is_file()

    def write(self, item: ImageItem, texts: list[str]) -> None:
        write_atomically(self.path(item), "".join(text + "\n" for text in texts))


def write_atomically(path: Path, text: str) -> None:
    """Write a temporary file beside `path`, then rename it over `path`: a kill leaves the old
    file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _to_cells(row: Row) -> dict[str, Any]:
    return {
        key: json.dumps(value, ensure_ascii=False) if key in _LIST_COLUMNS else value
        for key, value in row.items()
    }


def _from_cells(cells: dict[str, str]) -> Row:
    row: Row = {}
    for key, value in cells.items():
        if value in ("", None):
            continue
        if key in _LIST_COLUMNS:
            row[key] = json.loads(value)
        elif key == "score":
            row[key] = float(value)
        else:
            row[key] = value
    return row
