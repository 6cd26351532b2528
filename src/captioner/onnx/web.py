"""`captioner export MODEL --web DIR`: a static site that captions in the browser.

The site is the built page (frontend/, `make frontend`), which already holds ONNX Runtime Web's
WASM, and the model's int8 ONNX export under `model/` (`captioner.json` + graphs), where the page
looks for it. Any static file server serves it (`python -m http.server --directory DIR`); no API
is needed and photos never leave the device. `captioner serve --page-dir DIR` serves the same
page with both: it then offers "on this device" and "server".
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from captioner.onnx.export import DESCRIPTION_FILE, export_onnx

if TYPE_CHECKING:
    from captioner.model import Captioner

# Where `npm run build` in frontend/ puts the page (an editable install runs from the checkout).
DEFAULT_PAGE_DIR = Path(__file__).resolve().parents[3] / "frontend" / "dist"
# The folder of the site the page reads the model from (frontend/src/device/deviceBackend.ts).
MODEL_DIR = "model"
WEB_VARIANTS = ("int8",)


def site_size(directory: str | Path) -> int:
    """Bytes of every file under `directory`."""
    return sum(p.stat().st_size for p in Path(directory).rglob("*") if p.is_file())


def write_site(
    model: Captioner, directory: str | Path, page_dir: str | Path = DEFAULT_PAGE_DIR
) -> Path:
    """The page from `page_dir` and `model`'s int8 ONNX export, as a static site in `directory`.

    `directory` must be new, empty or a site written before (it is then replaced whole), so a
    typo never overwrites an unrelated folder. ValueError says what is wrong."""
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
        if directory.exists():
            shutil.rmtree(directory)
        site.rename(directory)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return directory


def _replaceable(directory: Path) -> bool:
    return directory.is_dir() and (
        not any(directory.iterdir()) or (directory / MODEL_DIR / DESCRIPTION_FILE).is_file()
    )
