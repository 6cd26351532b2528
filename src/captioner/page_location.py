"""Where the built web page is, for `captioner serve` and `captioner export --web`.

A wheel carries the page inside the package, in `captioner/built_page/` (setup.py's build step
copies `frontend/dist` there); a checkout (an editable install) has it in `frontend/dist` after
`make frontend`. Only the standard library here: the server imports this before any model.
"""

from __future__ import annotations

from pathlib import Path

PACKAGED_PAGE_DIR = Path(__file__).resolve().parent / "built_page"
CHECKOUT_PAGE_DIR = Path(__file__).resolve().parents[2] / "frontend" / "dist"


def default_page_dir() -> Path:
    """The packaged page where there is one, else the checkout's `frontend/dist` (also when it
    is not built yet, so that "the page is not built" names the folder `make frontend` fills)."""
    if (PACKAGED_PAGE_DIR / "index.html").is_file():
        return PACKAGED_PAGE_DIR
    return CHECKOUT_PAGE_DIR
