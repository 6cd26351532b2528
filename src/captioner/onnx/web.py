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

import gzip
import json
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from captioner.page import PAGE_FILE, default_page_dir, page_description
from captioner.runtime.onnx import DESCRIPTION_FILE

if TYPE_CHECKING:
    from captioner.torch_model import CaptionModel

DEFAULT_PAGE_DIR = default_page_dir()  # the wheel's packaged page, or frontend/dist in a checkout
# The folder of the site the page reads the model from (frontend/src/device/deviceBackend.ts).
MODEL_DIR = "model"
WEB_VARIANTS = ("int8",)
# A graph is stored as `<name>.gz` (which the page decompresses) when that saves at least this
# share of its bytes. Measured on the bundled model: the int8 decoder graphs save 18-26%, the
# float32 encoder 8% (1.5 MB, which Chromium took 0.24 s to decompress: about what 1.5 MB takes
# to download at 50 Mbit/s); below a few percent the browser would decompress for little.
MIN_GZIP_SAVING = 0.05
GZIP_SUFFIX = ".gz"


def site_size(directory: str | Path) -> int:
    """Bytes of every file under `directory`."""
    return sum(p.stat().st_size for p in Path(directory).rglob("*") if p.is_file())


def write_site(
    model: CaptionModel, directory: str | Path, page_dir: str | Path = DEFAULT_PAGE_DIR
) -> Path:
    """The page from `page_dir` and `model`'s int8 ONNX export, as a static site in `directory`.

    `directory` must be new, empty or a site written before (it is then replaced whole), so a
    typo never overwrites an unrelated folder. ValueError says what is wrong."""
    from captioner.onnx.export import export_onnx

    directory, page_dir = Path(directory), Path(page_dir)
    if not (page_dir / "index.html").is_file():
        raise ValueError(
            f"the page is not built ({page_dir} has no index.html): run `make frontend`"
        )
    if directory.exists() and not _replaceable(directory):
        raise ValueError(
            f"{directory} exists and is not a site `--web` wrote (no {MODEL_DIR}/"
            f"{DESCRIPTION_FILE}): give a new or empty folder"
        )
    directory.parent.mkdir(parents=True, exist_ok=True)
    # Built beside the target and moved into place, so a failed export leaves no half site.
    scratch = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    try:
        site = scratch / "site"
        shutil.copytree(page_dir, site)
        if (site / MODEL_DIR).exists():
            raise ValueError(f"{page_dir} already has a {MODEL_DIR}/ folder: not a built page")
        export_onnx(model, site / MODEL_DIR, WEB_VARIANTS)
        compress_graphs(site / MODEL_DIR)
        # Tells the page it is static: it then never asks for the API a static host lacks.
        description = page_description(server=False, device_model=True)
        (site / PAGE_FILE).write_text(json.dumps(description) + "\n")
        if directory.exists():
            shutil.rmtree(directory)
        site.rename(directory)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return directory


def compress_graphs(model_dir: str | Path) -> None:
    """Each graph `captioner.json` in `model_dir` names, replaced by `<name>.gz` where that
    saves `MIN_GZIP_SAVING` of it, and `captioner.json` naming the files kept."""
    model_dir = Path(model_dir)
    description_file = model_dir / DESCRIPTION_FILE
    description = json.loads(description_file.read_text())
    stored: dict[str, str] = {}  # a graph file -> the file the site keeps (variants share some)
    for files in description["variants"].values():
        for graph, name in files.items():
            if name not in stored:
                stored[name] = _gzip_if_smaller(model_dir / name).name
            files[graph] = stored[name]
    description_file.write_text(json.dumps(description, indent=1) + "\n")


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


def _replaceable(directory: Path) -> bool:
    return directory.is_dir() and (
        not any(directory.iterdir()) or (directory / MODEL_DIR / DESCRIPTION_FILE).is_file()
    )
