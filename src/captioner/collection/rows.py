r"""Where a collection job's captions go: JSONL or CSV files appended one batch at a time (and
read back to resume), and caption files beside the images.

A row file only ever grows by whole rows, flushed after each batch, so a killed run loses at
most the batch in flight. A row cut off by the kill is left out when the file is read and dropped
before anything is appended, so it never breaks the next read.

Any name the file system allows round-trips. JSONL lines end at "\n" only (a U+2028 in a name is
not a line break); a name that is not UTF-8 (Python holds its bytes as lone surrogates,
`os.fsdecode`) is written as `\udcXX` escapes in JSONL, which `json.loads` gives back, and as its
own bytes in CSV (read it with `errors="surrogateescape"`). CSV cells are all quoted, so a
`\r` or `\n` stays inside its row, and a text cell that a spreadsheet would run as a formula
(starting with = + - @, a tab or a CR: OWASP's rule) gets a `'` in front, as does one that
already starts with `'`; reading takes that `'` off again.

A file captioner writes gets the user's umask, like any other file they create. Caption files
beside images are recorded in `.captioner-sidecars` in each folder, so that a caption file the
user wrote is never taken for one of ours and replaced.
"""

from __future__ import annotations

import csv
import errno
import fcntl
import glob
import io
import json
import os
import re
import tempfile
import threading
from collections.abc import Iterator
from itertools import accumulate, zip_longest
from pathlib import Path
from typing import Any, NoReturn, TextIO

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
# Text cells a spreadsheet could take for a formula start with one of these (OWASP, "CSV
# Injection"); "'" is the mark put in front, so a cell starting with it gets one too.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "'")
_TEXT_COLUMNS = ("image", "caption", "attention_dir", "error")
# Lone surrogates: the bytes of a name that is not UTF-8, as Python decodes it (os.fsdecode).
_SURROGATES = re.compile("[\ud800-\udfff]")
# Written by json.dumps(ensure_ascii=False) as they are, but line breaks to many readers.
_LINE_SEPARATORS = {"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"}

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
        """The rows of its complete lines, and whether a cut-off last row was left out."""
        if os.path.exists(self.path) and not os.path.isfile(self.path):
            raise ValueError(f"{self.path} is not a file: give a .jsonl or .csv file to write")
        if not os.path.isfile(self.path):
            return [], False
        try:
            data = self.path.read_bytes()
        except OSError as error:
            raise ValueError(f"cannot read {self.path}: {error.strerror}") from None
        # CSV holds names that are not UTF-8 as their bytes; JSONL as escapes (valid UTF-8).
        errors = "surrogateescape" if self.suffix == ".csv" else "strict"
        try:
            text = data.decode("utf-8", errors)
        except UnicodeDecodeError:
            raise ValueError(f"{self.path} is not a UTF-8 text file of captions") from None
        if self.suffix == ".csv":
            rows, end = _parse_csv(text, self.path)
        else:
            end = text.rfind("\n") + 1
            rows = _parse_jsonl(text[:end], self.path)
        return rows, end < len(text)

    # ---- writing ---------------------------------------------------------------------------
    def open(self) -> None:
        """Open for appending (created if missing)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Held open across batches, closed by close().
        self._handle = open(  # noqa: SIM115
            self.path, "a", encoding="utf-8", errors="surrogateescape", newline=""
        )
        if self.suffix == ".csv" and self._handle.tell() == 0:
            self._handle.write(encode_rows(self.suffix, [], header=True))
            self._handle.flush()

    def append(self, rows: list[Row]) -> None:
        """Write whole lines and flush them, so that they outlive a kill of this process."""
        if rows:
            assert self._handle is not None, "open() first"
            try:
                self._handle.write(encode_rows(self.suffix, rows))
                self._handle.flush()
            except OSError as error:  # a full disk: say which file
                raise OSError(error.errno, error.strerror, str(self.path)) from None

    def close(self) -> None:
        if self._handle is not None:
            handle, self._handle = self._handle, None
            try:
                handle.close()  # flushes what a failed write left in the buffer
            except OSError as error:
                raise OSError(error.errno, error.strerror, str(self.path)) from None

    def rewrite(self, rows: list[Row]) -> None:
        """Replace the whole file at once (readers see the old one or the new one)."""
        write_atomically(self.path, encode_rows(self.suffix, rows, header=True))

    def delete(self) -> None:
        self.path.unlink(missing_ok=True)

    def remove_stale_temporaries(self) -> None:
        """Remove the temporary files `rewrite` left beside the file when killed mid-write (only
        while holding its lock: no other job is writing one)."""
        stem, suffix = glob.escape(self.path.stem), glob.escape(self.path.suffix)
        for pattern in (f".{stem}{suffix}.*.tmp", f".{stem}.part-*{suffix}.*.tmp"):
            for temporary in self.path.parent.glob(pattern):
                temporary.unlink(missing_ok=True)

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


# ---- the two formats, apart from the file they are read from and written to ----------------
def encode_rows(suffix: str, rows: list[Row], header: bool = False) -> str:
    """`rows` as the text of a `.jsonl` or `.csv` file (a CSV's column names first, when
    `header`)."""
    if suffix == ".jsonl":
        return "".join(json_line(row) + "\n" for row in rows)
    buffer = io.StringIO()
    if header:
        buffer.write(",".join(CSV_COLUMNS) + "\n")
    # Every cell quoted: Python 3.11 leaves a "\r" unquoted, which splits the row.
    writer = csv.DictWriter(buffer, CSV_COLUMNS, lineterminator="\n", quoting=csv.QUOTE_ALL)
    writer.writerows(_to_cells(row) for row in rows)
    return buffer.getvalue()


def _parse_jsonl(text: str, path: Path) -> list[Row]:
    rows = []
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            _not_ours(path, number)
        if not _is_row(row):
            _not_ours(path, number)
        rows.append(row)
    return rows


def _parse_csv(text: str, path: Path) -> tuple[list[Row], int]:
    """The rows of its complete records, and where they end: a record cut off by a kill
    (no newline after it, or a quoted cell never closed) is left out."""
    lines = text.split("\n")
    lines = [line + "\n" for line in lines[:-1]] + ([lines[-1]] if lines[-1] else [])
    ends = list(accumulate(len(line) for line in lines))
    taken = 0  # lines the reader has taken

    def take() -> Iterator[str]:
        nonlocal taken
        for line in lines:
            taken += 1
            yield line

    reader = csv.reader(take(), strict=True)
    rows: list[Row] = []
    header, end = None, 0
    try:
        for record in reader:
            if not lines[taken - 1].endswith("\n"):
                break  # the last record, with no newline after it: cut off
            end = ends[taken - 1]
            if not record:
                continue
            if header is None:
                header = tuple(record)
                if header != CSV_COLUMNS:
                    _not_ours(path, 1)
                continue
            try:
                rows.append(_from_cells(dict(zip(CSV_COLUMNS, record, strict=True))))
            except ValueError:
                _not_ours(path, reader.line_num)
    except csv.Error:
        if taken < len(lines):  # a broken record with more after it: not a cut
            _not_ours(path, reader.line_num)
    return rows, end


def _not_ours(path: Path, line: int) -> NoReturn:
    raise ValueError(
        f"{path} line {line} is not a caption row written by captioner: "
        "pass --overwrite to replace the file, or choose another output"
    )


def json_line(row: Row) -> str:
    """`row` as one line of JSON that is valid UTF-8 whatever its names hold (see the module's
    docstring)."""
    text = json.dumps(row, ensure_ascii=False)
    for separator, escape in _LINE_SEPARATORS.items():
        text = text.replace(separator, escape)
    return _SURROGATES.sub(lambda found: f"\\u{ord(found.group()):04x}", text)


def _is_row(row: object) -> bool:
    """Whether `row` is one captioner writes: an image's caption (with its tokens and score) or
    its error, and no other field. A data set's own caption file is not one."""
    return (
        isinstance(row, dict)
        and isinstance(row.get("image"), str)
        and set(row) <= set(CSV_COLUMNS)
        and ("error" in row or {"caption", "tokens", "score"} <= set(row))
    )


class OutputLock:
    """One writer an output: a lock on `.<name>.lock` beside it, held while a job writes. A
    second job on the same output is refused while the first runs.

    A POSIX record lock (`lockf`): it belongs to this process alone, so the image loader
    processes it forks do not hold it on after it is killed, and it goes with the process
    however it ends. Jobs within one process are told apart by `_held`."""

    _held: set[Path] = set()  # shared on purpose: the locks this process holds

    def __init__(self, output: Path):
        self.path = output.with_name(f".{output.name}.lock")
        self.output = output
        self._handle: int | None = None

    def acquire(self) -> OutputLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        key = self.path.resolve()
        while True:
            try:
                handle = os.open(self.path, os.O_RDWR | os.O_CREAT, _file_mode(self.path))
            except OSError as error:
                raise ValueError(f"cannot write {self.output}: {error.strerror}") from None
            try:
                if key in self._held:
                    raise BlockingIOError
                fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                os.close(handle)
                if error.errno not in (None, errno.EACCES, errno.EAGAIN):
                    raise ValueError(f"cannot lock {self.path}: {error.strerror}") from None
                raise ValueError(
                    f"another captioner job is writing {self.output} (it holds {self.path}): "
                    "wait for it to finish, or choose another output"
                ) from None
            # Locked a file that a finishing job had just removed: take the new one.
            if _same_file(handle, self.path):
                self._handle = handle
                self._held.add(key)
                return self
            os.close(handle)

    def release(self) -> None:
        if self._handle is not None:
            self._held.discard(self.path.resolve())
            self.path.unlink(missing_ok=True)  # still held: nobody else can be using it
            os.close(self._handle)
            self._handle = None


def _same_file(handle: int, path: Path) -> bool:
    try:
        found = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(handle)
    return (found.st_dev, found.st_ino) == (held.st_dev, held.st_ino)


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


# In each folder that holds caption files beside its images: the names of those captioner wrote.
SIDECAR_MANIFEST = ".captioner-sidecars"


class Sidecars:
    """A caption file beside each image: `photo.jpg` -> `photo.txt` for the suffix `.txt`.

    Each one written is first named in its folder's `SIDECAR_MANIFEST` (one JSON string a line,
    appended), so that only those are ever taken as done or replaced: a `photo.txt` of the
    user's own is refused unless the job overwrites."""

    def __init__(self, suffix: str):
        self.suffix = suffix
        self._written: dict[Path, set[str]] = {}  # folder -> names its manifest holds

    def path(self, item: ImageItem) -> Path:
        assert item.path is not None  # sidecars are for image files
        return item.path.with_suffix(self.suffix)

    def ours(self, path: Path) -> bool:
        """Whether `path` is a caption file captioner wrote."""
        return path.name in self._manifest(path.parent)

    def exists(self, item: ImageItem) -> bool:
        path = self.path(item)
        return os.path.isfile(path) and self.ours(path)

    def check(self, items: list[ImageItem], overwrite: bool) -> None:
        """ValueError for a caption file path that is a folder, or a file captioner did not
        write (unless `overwrite`): the first is never replaced, the second only when asked."""
        for item in items:
            path = self.path(item)
            if not os.path.lexists(path):
                continue
            if not os.path.isfile(path):
                raise ValueError(f"the {self.suffix} file of {item.path}, {path}, is not a file")
            if not overwrite and not self.ours(path):
                raise ValueError(
                    f"{path} exists and was not written by captioner: pass --overwrite to "
                    "replace it, or choose another --sidecar suffix"
                )

    def write(self, item: ImageItem, texts: list[str]) -> None:
        path = self.path(item)
        names = self._manifest(path.parent)
        if path.name not in names:  # named before it is written: a kill leaves no stranger
            line = (json.dumps(path.name) + "\n").encode()
            manifest = path.parent / SIDECAR_MANIFEST
            handle = os.open(manifest, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            try:
                os.write(handle, line)  # one short write in append mode: lines never mix
            finally:
                os.close(handle)
            names.add(path.name)
        write_atomically(path, "".join(text + "\n" for text in texts))

    def _manifest(self, folder: Path) -> set[str]:
        if folder not in self._written:
            names = set()
            try:
                lines = (folder / SIDECAR_MANIFEST).read_text(encoding="utf-8").split("\n")
            except (FileNotFoundError, NotADirectoryError):
                lines = []
            except (OSError, UnicodeDecodeError) as error:
                raise ValueError(f"cannot read {folder / SIDECAR_MANIFEST}: {error}") from None
            for line in lines:
                try:
                    name = json.loads(line) if line.strip() else None
                except json.JSONDecodeError:
                    continue  # a line cut off by a kill
                if isinstance(name, str):
                    names.add(name)
            self._written[folder] = names
        return self._written[folder]


_umask_lock = threading.Lock()


def _file_mode(path: Path) -> int:
    """The mode a new file gets from the user's umask, or that of the file it replaces."""
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        pass
    with _umask_lock:  # read by setting it: put back at once
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


def write_atomically(path: Path, text: str) -> None:
    """Write a temporary file beside `path`, then rename it over `path`: a kill leaves the old
    file or the new one, never half of one. The file keeps its mode, or gets the umask's."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = _file_mode(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(handle, mode)
        with os.fdopen(handle, "w", encoding="utf-8", errors="surrogateescape", newline="") as file:
            file.write(text)
        os.replace(temporary, path)
    except OSError as error:  # a full disk: say which file
        Path(temporary).unlink(missing_ok=True)
        raise OSError(error.errno, error.strerror, str(path)) from None
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _to_cells(row: Row) -> dict[str, Any]:
    cells = {}
    for key, value in row.items():
        if key in _LIST_COLUMNS:
            value = json.dumps(value, ensure_ascii=False)
        elif key in _TEXT_COLUMNS and isinstance(value, str) and value.startswith(_FORMULA_STARTS):
            value = "'" + value
        cells[key] = value
    return cells


def _from_cells(cells: dict[str, str]) -> Row:
    row: Row = {}
    for key, value in cells.items():
        if value in ("", None):
            continue
        if key in _LIST_COLUMNS:
            row[key] = json.loads(value)
        elif key == "score":
            row[key] = float(value)
        elif key in _TEXT_COLUMNS and value.startswith("'"):
            row[key] = value[1:]
        else:
            row[key] = value
    return row
