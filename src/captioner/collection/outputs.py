"""Where a collection job writes (a row file, caption files beside the images, heatmap folders)
and what an earlier run left there, which the job resumes from."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from captioner.collection.inputs import ImageItem
from captioner.collection.rows import (
    OutputLock,
    Row,
    RowFile,
    Sidecars,
    interleave,
    is_caption,
    merge_rows,
)
from captioner.launcher import launcher_rank


class JobOutputs:
    """A job's outputs, checked before any work is done.

    `leave_out` the outputs from the images found; `claim` the row file (lock it, read it);
    `done` says what an earlier run finished; `open` this rank's file, `append` each batch's
    rows, `close` it (rank 0 merges the per-rank files); `release` lets another job write."""

    def __init__(
        self,
        output: Path | None,
        sidecar: str | None,
        attention_dir: Path | None,
        overwrite: bool,
    ):
        self.row_file = RowFile(output) if output is not None else None
        self.sidecars = Sidecars(sidecar) if sidecar else None
        self.attention_dir = attention_dir
        self.overwrite = overwrite
        if output is not None:
            check_writable(Path(output), is_folder=False)
        if attention_dir is not None:
            check_writable(Path(attention_dir), is_folder=True)
        self.own: RowFile | None = None  # this rank's file, once opened
        self._lock: OutputLock | None = None
        # The rows of the output and of every per-rank file when claimed, and whether the
        # output's last line was cut off.
        self._existing: list[list[Row]] = [[]]
        self._torn = False

    # ---- before any work ---------------------------------------------------------------------
    def leave_out(self, items: list[ImageItem]) -> list[ImageItem]:
        """`items` less this job's own output files found in the input folders (the row file,
        its heatmaps, and with sidecars every file with their suffix). ValueError for an output
        that is an image named as input, and for caption files that would overwrite an image,
        the output, a file of the user's or each other."""
        outputs: set[Path] = set()
        if self.row_file is not None:
            outputs = {f.path.resolve() for f in [self.row_file, *self.row_file.parts()]}
            for item in items:
                if not item.in_folder and item.path is not None and item.path.resolve() in outputs:
                    raise ValueError(
                        f"the output {self.row_file.path} is one of the images to caption: "
                        "choose another output"
                    )
        if self.attention_dir is not None:
            heatmaps = Path(self.attention_dir).resolve()
            items = [i for i in items if not _found_below(i, heatmaps)]
        if self.sidecars is not None:
            items = self._leave_out_sidecars(items, self.sidecars, outputs)
        return [i for i in items if i.path is None or i.path.resolve() not in outputs]

    def _leave_out_sidecars(
        self, items: list[ImageItem], sidecars: Sidecars, outputs: set[Path]
    ) -> list[ImageItem]:
        if any(item.path is None for item in items):
            raise ValueError("sidecar files need image files; this dataset holds image bytes")
        suffix = sidecars.suffix.lower()
        items = [
            i
            for i in items
            if not (i.in_folder and i.path is not None and i.path.suffix.lower() == suffix)
        ]
        # An unreadable folder's error row has no caption file.
        readable = [item for item in items if item.error is None]
        images = {item.path.resolve() for item in readable if item.path is not None}
        owners: dict[Path, ImageItem] = {}
        for item in readable:
            sidecar = sidecars.path(item).resolve()
            if sidecar in images or sidecar in outputs:
                raise ValueError(f"the {suffix} file of {item.path} would overwrite {sidecar}")
            if sidecar in owners:
                raise ValueError(
                    f"{owners[sidecar].path} and {item.path} would share one {suffix} file"
                )
            owners[sidecar] = item
        sidecars.check(readable, self.overwrite)
        return items

    def claim(self) -> None:
        """Lock the row file, one job an output (by the process that becomes rank 0 of a
        distributed job; released by `release`), and read it now, before any rank can start
        writing. ValueError, the lock released, for a file that is not a captioner output."""
        if self.row_file is None:
            return
        if launcher_rank() == 0:
            self._lock = OutputLock(self.row_file.path).acquire()
        if self.overwrite:
            return
        try:
            main, self._torn = self.row_file.read()
            self._existing = [main, *(part.read()[0] for part in self.row_file.parts())]
        except ValueError:
            self.release()
            raise

    def done(self, items: list[ImageItem]) -> set[str]:
        """The names of the images every output already has (a caption row and/or a caption
        file): an earlier run's, skipped unless the job overwrites."""
        if self.overwrite:
            return set()
        done: set[str] | None = None
        if self.row_file is not None:
            done = {row["image"] for rows in self._existing for row in rows if is_caption(row)}
        if self.sidecars is not None:
            with_sidecar = {item.name for item in items if self.sidecars.exists(item)}
            done = with_sidecar if done is None else done & with_sidecar
        return done or set()

    # ---- writing -----------------------------------------------------------------------------
    def open(self, rank: int, world: int, barrier: Callable[[], None]) -> None:
        """Clean up the row files and open this rank's own (the output itself in a job of one
        process); its cut-off line and error rows go, so that failed images are tried again."""
        if self.row_file is None:
            return
        own = self.row_file if world == 1 else self.row_file.part(rank)
        if self._lock is not None:
            self.row_file.remove_stale_temporaries()
        if rank == 0 and self.overwrite:
            for stale in [self.row_file, *self.row_file.parts()]:
                stale.delete()
        barrier()
        own_rows, own_torn = own.read() if world > 1 else (self._existing[0], self._torn)
        kept = [row for row in own_rows if is_caption(row)]
        if not self.overwrite and (own_torn or len(kept) < len(own_rows)):
            own.rewrite(kept)
        own.open()
        self.own = own

    def append(self, rows: list[Row]) -> None:
        if self.own is not None:
            self.own.append(rows)

    def close(self, rank: int, barrier: Callable[[], None]) -> None:
        """Close this rank's file; rank 0 then merges the per-rank files into the output."""
        if self.row_file is None or self.own is None:
            return
        self.own.close()
        barrier()
        parts = self.row_file.parts()
        if rank == 0 and parts:
            main, _ = self.row_file.read()
            self.row_file.rewrite(merge_rows(main, interleave([part.read()[0] for part in parts])))
            for part in parts:
                part.delete()

    def release(self) -> None:
        """Let another job write the output."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None


def _found_below(item: ImageItem, folder: Path) -> bool:
    """Whether `item` was found in an input folder, somewhere below `folder`."""
    return item.in_folder and item.path is not None and item.path.resolve().is_relative_to(folder)


def check_writable(path: Path, is_folder: bool) -> None:
    """ValueError, before any work, for an output file or folder that cannot be written: one of
    the wrong kind there, a folder above it that is a file, or no permission. Creates the
    folder it goes in."""
    kind = "folder" if is_folder else "file"
    if os.path.exists(path) and os.path.isdir(path) != is_folder:
        raise ValueError(f"{path} is not a {kind}: give a {kind} to write")
    folder = path if is_folder else path.parent
    above = folder
    while not os.path.lexists(above) and above != above.parent:
        above = above.parent
    if not os.path.isdir(above):
        raise ValueError(f"cannot write {path}: {above} is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"cannot write {path}: {error.strerror}") from None
    writable = os.access(folder, os.W_OK | os.X_OK)
    if not writable or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise ValueError(f"cannot write {path}: permission denied")
