"""`captioner export MODEL --web DIR`: a static site that captions in the browser.

The site is the built page (frontend/, `make frontend`), which already holds ONNX Runtime Web's
WASM (gzip-compressed by the build), and the model's int8 ONNX export under `model/`
(`captioner.json` + graphs), where the page looks for it. The graphs are stored gzip-compressed
(`<name>.gz`, named so in the site's `captioner.json`) where that saves enough: the page
decompresses them in the browser, and the site stays small enough to host. Any static file
server serves it (`python -m http.server --directory DIR`); no API is needed and photos never
leave the device. `captioner serve --page-dir DIR` serves the same
page with both: it then offers "on this device" and "server".
"""

from __future__ import annotations

import contextlib
import glob
import gzip
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from captioner.hub import CONFIG_FILE, DESCRIPTION_FILE, TOKENIZER_FILE
from captioner.page import PAGE_FILE, default_page_dir, page_description
from captioner.runtime.onnx import read_description

if TYPE_CHECKING:
    from captioner.torch_model import CaptionModel

DEFAULT_PAGE_DIR = default_page_dir()  # the wheel's packaged page, or frontend/dist in a checkout
# The folder of the site the page reads the model from (frontend/src/device/deviceBackend.ts).
MODEL_DIR = "model"
WEB_VARIANTS = ("int8",)
# A graph is stored as `<name>.gz` (which the page decompresses) when that saves at least this
# share of its bytes; a graph that shrinks less stays plain, since the browser would spend
# about as long decompressing it as the saved bytes take to download.
MIN_GZIP_SAVING = 0.05
GZIP_SUFFIX = ".gz"
# In a site's or an ONNX export's folder: the files export wrote there (the only ones a later
# export replaces or removes).
EXPORT_MANIFEST = ".captioner-export.json"
# In an export's temporary folder: the id of the process writing it (stale when it is gone).
SCRATCH_MARKER = ".captioner-export-pid"


def site_size(directory: str | Path) -> int:
    """Bytes of every file under `directory`."""
    return sum(p.stat().st_size for p in Path(directory).rglob("*") if p.is_file())


def write_site(
    model: CaptionModel, directory: str | Path, page_dir: str | Path = DEFAULT_PAGE_DIR
) -> Path:
    """The page from `page_dir` and `model`'s int8 ONNX export, as a static site in `directory`.

    `directory` must be new, empty or a site written before. The site is built in a temporary
    folder beside it and moved into place; over a site written before, only the files that
    export wrote (named in its `EXPORT_MANIFEST`) are replaced or removed, so files the user
    added (a CNAME, a blog/) stay, and a file of theirs where the new site has one is refused.
    ValueError says what is wrong."""
    from captioner.onnx.export import export_onnx

    return _build_site(
        Path(directory), Path(page_dir), lambda target: export_onnx(model, target, WEB_VARIANTS)
    )


def write_site_from_export(
    exported: str | Path, directory: str | Path, page_dir: str | Path = DEFAULT_PAGE_DIR
) -> Path:
    """`write_site`'s site, its model copied from the int8 graphs a model folder already has
    (`has_web_graphs`: an ONNX export, the bundled model) rather than exported: no torch."""
    exported = Path(exported)
    return _build_site(
        Path(directory), Path(page_dir), lambda target: copy_web_model(exported, target)
    )


def _build_site(directory: Path, page_dir: Path, write_model: Callable[[Path], object]) -> Path:
    """The site of `write_site`, `write_model(folder)` writing its model into the folder."""
    if not (page_dir / "index.html").is_file():
        raise ValueError(
            f"the page is not built ({page_dir} has no index.html): run `make frontend`"
        )
    ours = _files_written(directory)
    with scratch_beside(directory) as site:
        shutil.copytree(page_dir, site)
        if (site / MODEL_DIR).exists():
            raise ValueError(f"{page_dir} already has a {MODEL_DIR}/ folder: not a built page")
        write_model(site / MODEL_DIR)
        compress_graphs(site / MODEL_DIR)
        # Tells the page it is static: it then never asks for the API a static host lacks.
        description = page_description(server=False, device_model=True)
        (site / PAGE_FILE).write_text(json.dumps(description) + "\n")
        install_export(site, directory, ours)
    return directory


def has_web_graphs(model_dir: Path) -> bool:
    """Whether the model folder has a `captioner.json` naming the site's int8 graphs;
    ExportedModelError for one this version cannot read."""
    if not (model_dir / DESCRIPTION_FILE).is_file():
        return False
    variants = read_description(model_dir)["variants"]
    return isinstance(variants, dict) and all(variant in variants for variant in WEB_VARIANTS)


def copy_web_model(exported: Path, target: Path) -> None:
    """What `export_onnx(model, target, WEB_VARIANTS)` writes, copied from the folder of an
    export: its `captioner.json` naming only the int8 variant, the graphs that names, and the
    config and vocabulary that make the folder a whole model."""
    description = read_description(exported)
    description["variants"] = {v: description["variants"][v] for v in WEB_VARIANTS}
    files = {CONFIG_FILE, TOKENIZER_FILE, *_graph_names(exported, description["variants"])}
    for name in sorted(files):
        if not (exported / name).is_file():
            raise ValueError(f"{exported / name} is missing: the model folder is incomplete")
    target.mkdir()
    for name in files:
        shutil.copyfile(exported / name, target / name)
    write_description(target, description)


def _graph_names(exported: Path, variants: dict[str, Any]) -> set[str]:
    """The graph files `variants` (of `exported`'s `captioner.json`) names; ValueError for a
    name that is a path rather than a file's name: it would copy a file from elsewhere."""
    where = exported / DESCRIPTION_FILE
    if not all(isinstance(files, dict) for files in variants.values()):
        raise ValueError(f"{where}: a variant is not a mapping of graphs to files")
    names = {name for files in variants.values() for name in files.values()}
    for name in names:
        if not isinstance(name, str) or PurePosixPath(name).name != name or name == "..":
            raise ValueError(f"{where}: {name!r} is not the name of a file beside it")
    return names


@contextlib.contextmanager
def scratch_beside(directory: Path) -> Iterator[Path]:
    """A new path to build an export for `directory` in, in a temporary folder beside it (the
    same file system, so moving it into place is a rename), removed afterwards; those of killed
    exports are removed first. ValueError when the folder cannot be made."""
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_scratch(directory)
        scratch = Path(tempfile.mkdtemp(prefix=_scratch_prefix(directory), dir=directory.parent))
        (scratch / SCRATCH_MARKER).write_text(str(os.getpid()))
    except OSError as error:
        raise ValueError(f"cannot write {directory}: {error.strerror}") from None
    try:
        yield scratch / "export"
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _files_written(directory: Path) -> set[str] | None:
    """The files an earlier export wrote in `directory` (None: it is new or empty); ValueError
    for a folder that is not a site `--web` wrote."""
    if not directory.exists() or (directory.is_dir() and not any(directory.iterdir())):
        return None
    written = files_written(directory)
    if written is not None:
        return written
    if directory.is_dir() and (directory / MODEL_DIR / DESCRIPTION_FILE).is_file():
        # Written before sites named their files: the model and the page's own folders.
        folders = (MODEL_DIR, "assets")
        return {
            p.relative_to(directory).as_posix()
            for p in directory.rglob("*")
            if p.is_file()
            and (p.relative_to(directory).parts[0] in folders or p.name == "index.html")
        }
    raise ValueError(
        f"{directory} exists and is not a site `--web` wrote (no {EXPORT_MANIFEST}): give a new "
        "or empty folder"
    )


def files_written(directory: Path) -> set[str] | None:
    """The files (relative paths) an earlier export's `EXPORT_MANIFEST` in `directory` names,
    itself included; None without one."""
    manifest = directory / EXPORT_MANIFEST
    if not manifest.is_file():
        return None
    try:
        files = json.loads(manifest.read_text())["files"]
        return {str(file) for file in files} | {EXPORT_MANIFEST}
    except (ValueError, KeyError, TypeError, OSError):
        raise ValueError(f"{manifest} is damaged: give a new or empty folder") from None


def install_export(built: Path, directory: Path, ours: set[str] | None) -> None:
    """Move the export in `built` to `directory`, naming its files in `EXPORT_MANIFEST`:
    renamed into place when `directory` is new or empty (`ours` None); else its files moved
    over those an earlier export wrote (`ours`, relative paths), which it no longer has
    removed. Anything else in `directory` is the user's and stays; one where the export has a
    file is refused before anything moves."""
    files = sorted(p.relative_to(built).as_posix() for p in built.rglob("*") if p.is_file())
    (built / EXPORT_MANIFEST).write_text(json.dumps({"files": files}, indent=1) + "\n")
    if ours is None:
        if directory.exists():
            directory.rmdir()
        built.rename(directory)
        return
    files.append(EXPORT_MANIFEST)
    # A manifest is a file anyone can edit: nothing outside `directory` is ever touched.
    ours = {file for file in ours if _inside(file)}
    for file in files:
        target = directory / file
        if file not in ours and os.path.lexists(target) and not _same_bytes(built / file, target):
            raise ValueError(
                f"{target} was not written by captioner and the export has a file there: move "
                "it, or give a new folder"
            )
    for file in sorted(ours - set(files)):
        old = directory / file
        if old.is_file():
            old.unlink()
        for folder in old.parents:  # folders the old site's files leave empty
            if folder == directory or not folder.is_dir() or any(folder.iterdir()):
                break
            folder.rmdir()
    for file in files:
        target = directory / file
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(built / file, target)


def _same_bytes(new: Path, old: Path) -> bool:
    """Whether `old` already holds exactly `new`'s bytes (a model folder's own config.json and
    tokenizer.json, when its graphs are exported into it): replacing it loses nothing."""
    return old.is_file() and not old.is_symlink() and new.read_bytes() == old.read_bytes()


def _inside(relative: str) -> bool:
    """Whether a relative path from a manifest stays inside the folder it names files of."""
    path = PurePosixPath(relative)
    return bool(relative) and not path.is_absolute() and ".." not in path.parts


def _scratch_prefix(directory: Path) -> str:
    return f".{directory.name}-export-"


def remove_stale_scratch(directory: Path) -> None:
    """Remove the temporary folders of exports to `directory` that were killed (their process
    is gone), recognised by the `SCRATCH_MARKER` inside."""
    for folder in directory.parent.glob(glob.escape(_scratch_prefix(directory)) + "*"):
        try:
            pid = int((folder / SCRATCH_MARKER).read_text())
        except (OSError, ValueError):
            continue  # not a scratch folder of ours, or one just being made
        if not _running(pid):
            shutil.rmtree(folder, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # someone else's process
    return True


def compress_graphs(model_dir: str | Path) -> None:
    """Each graph `captioner.json` in `model_dir` names, replaced by `<name>.gz` where that
    saves `MIN_GZIP_SAVING` of it, and `captioner.json` naming the files kept."""
    model_dir = Path(model_dir)
    description = json.loads((model_dir / DESCRIPTION_FILE).read_text())
    stored: dict[str, str] = {}  # a graph file -> the file the site keeps (variants share some)
    for files in description["variants"].values():
        for graph, name in files.items():
            if name not in stored:
                stored[name] = _gzip_if_smaller(model_dir / name).name
            files[graph] = stored[name]
    write_description(model_dir, description)


def write_description(model_dir: Path, description: dict[str, Any]) -> None:
    """`captioner.json` as the export writes it, so a copied model's is the same bytes."""
    (model_dir / DESCRIPTION_FILE).write_text(json.dumps(description, indent=1) + "\n")


def _gzip_if_smaller(file: Path) -> Path:
    """`file`, or `file.gz` in its place when that saves `MIN_GZIP_SAVING` of its bytes."""
    data = file.read_bytes()
    packed = gzip.compress(data, compresslevel=9, mtime=0)  # mtime 0: the same bytes each time
    if len(packed) > len(data) * (1 - MIN_GZIP_SAVING):
        return file
    target = file.with_name(file.name + GZIP_SUFFIX)
    target.write_bytes(packed)
    file.unlink()
    return target
