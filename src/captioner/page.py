"""The web page: where its built files are, and `page.json`, what it reads beside itself about
where it runs.

A wheel carries the page inside the package, in `captioner/built_page/` (setup.py's build step
copies `frontend/dist` there); a checkout (an editable install) has it in `frontend/dist` after
`make frontend`. Only the standard library here: the server imports this before any model.

The page asks for it before anything else. `captioner serve` answers it (there is a server; a
model beside the page when its page folder holds one), and `captioner export --web` writes it
into the static site (no server; the model under `model/`). The page then asks only for what is
there, so neither host logs a 404 for the other's files. Without it (`npm run dev`, the bare
build on some other host) the page tries both (frontend/src/pageInfo.ts reads it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

PACKAGED_PAGE_DIR = Path(__file__).resolve().parent / "built_page"
CHECKOUT_PAGE_DIR = Path(__file__).resolve().parents[2] / "frontend" / "dist"
PAGE_FILE = "page.json"
PAGE_FORMAT = "captioner-page"
# Where the page looks for an exported model, relative to itself (frontend/src/device/).
DEVICE_MODEL_DIR = "model"
DEVICE_MODEL_FILE = f"{DEVICE_MODEL_DIR}/captioner.json"


def page_description(*, server: bool, device_model: bool) -> dict[str, Any]:
    """`page.json`'s content: whether a `captioner serve` API is behind the page, and whether an
    exported model is beside it."""
    return {"format": PAGE_FORMAT, "server": server, "device_model": device_model}


def default_page_dir() -> Path:
    """The packaged page where there is one, else the checkout's `frontend/dist` (also when it
    is not built yet, so that "the page is not built" names the folder `make frontend` fills)."""
    if (PACKAGED_PAGE_DIR / "index.html").is_file():
        return PACKAGED_PAGE_DIR
    return CHECKOUT_PAGE_DIR
