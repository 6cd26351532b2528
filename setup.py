"""The build step pyproject.toml cannot say: a wheel carries the built web page.

`frontend/dist` (`make frontend`) is copied into the wheel as `captioner/built_page/`, where
`captioner.page.default_page_dir` finds it, so `captioner serve` and `captioner export --web` work from
an installed wheel. A build without the page fails in one line rather than making a wheel
whose server has no page. An editable install copies nothing: it reads `frontend/dist` itself.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

BUILT_PAGE = Path(__file__).resolve().parent / "frontend" / "dist"
# Inside the wheel, where captioner/page.py looks first.
PACKAGED_PAGE = Path("captioner") / "built_page"


class BuildWithPage(build_py):
    """build_py, then the built page into the package."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        if not (BUILT_PAGE / "index.html").is_file():
            raise SystemExit(
                f"error: the page is not built ({BUILT_PAGE} has no index.html): run "
                "`make frontend` (Node.js 20+) before building the wheel"
            )
        target = Path(self.build_lib) / PACKAGED_PAGE
        shutil.rmtree(target, ignore_errors=True)  # no file of an older build stays behind
        shutil.copytree(BUILT_PAGE, target)


setup(cmdclass={"build_py": BuildWithPage})
