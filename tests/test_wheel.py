"""The wheel, installed like software: built from this checkout, `pip install`ed into a fresh
venv outside it (only what the base install pulls), it captions, serves the page and exports the
bundled model as a static site without torch, transformers or Lightning.

About a minute: pip takes the dependencies from its cache (or the index) and nothing is compiled.
`pytest -m "not install"` leaves these tests out.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import site
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tiny_model import save_tiny_model

pytestmark = pytest.mark.install

REPO = Path(__file__).resolve().parents[1]
BUILT_PAGE = REPO / "frontend" / "dist"
# What a wheel is built from: pyproject.toml, setup.py (which adds the built page), the package.
BUILD_INPUTS = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "LICENSE", "src")
# Distributions (normalised names) and modules that only the training extra may bring.
TRAINING_DISTRIBUTIONS = {"torch", "transformers", "lightning", "pytorch-lightning"}
TRAINING_MODULES = {"torch", "transformers", "lightning", "pytorch_lightning"}
PIP = (sys.executable, "-m", "pip")  # the test's own pip: offline builds, its cache reused
SERVER_START_S = 120  # generous: a loaded 2-core machine, a cold disk cache


def normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def outside_env() -> dict[str, str]:
    """The environment without anything pointing Python at the checkout."""
    return {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}


def run(args: list[str | Path], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [str(arg) for arg in args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=outside_env(),
    )
    assert done.returncode == 0, f"{args}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


def base_requirements(wheel: Path) -> list[str]:
    """The wheel's Requires-Dist lines that hold without any extra."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = archive.read(name).decode()
    requirements = [
        line.split(":", 1)[1].strip()
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist:")
    ]
    return [r for r in requirements if "extra ==" not in r.replace("'", '"').split(";")[-1]]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a copy of the checkout's build inputs with the project's own
    setuptools (offline); a copy, so no build/ folder or stale module lands in the checkout."""
    if not (BUILT_PAGE / "index.html").is_file():
        pytest.skip("the page is not built (frontend/dist): run `make frontend`")
    source = tmp_path_factory.mktemp("source")
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in BUILD_INPUTS:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=ignore)
        else:
            shutil.copy2(REPO / name, source / name)
    shutil.copytree(BUILT_PAGE, source / "frontend" / "dist")
    out = tmp_path_factory.mktemp("wheel")
    run([*PIP, "wheel", "--no-deps", "--no-build-isolation", "-w", out, source], cwd=out)
    (built,) = out.glob("captioner-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh venv with a plain `pip install` of the wheel."""
    training = [
        r
        for r in base_requirements(wheel)
        if normalised(re.split(r"[ ;<>=!~\[(]", r)[0]) in TRAINING_DISTRIBUTIONS
    ]
    # Checked before installing: otherwise pip would fetch gigabytes of torch.
    assert not training, f"the base install requires training packages: {training}"
    venv = tmp_path_factory.mktemp("venv") / "plain"
    here = venv.parent
    run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=here)
    # The test's pip installs into it (`--python`), so the venv needs no pip of its own.
    run([*PIP, "--python", venv / "bin" / "python", "install", "-q", wheel], here, timeout=600)
    yield venv
    shutil.rmtree(venv)  # about 300 MB, which pytest would keep for three runs


@pytest.fixture(scope="module")
def venv_with_training(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The wheel in a fresh venv, with the training extra's packages borrowed from this
    environment (a .pth file naming its site-packages, read after the venv's own) rather than
    downloaded: enough to run `captioner export` from the installed wheel."""
    venv = tmp_path_factory.mktemp("venv") / "training"
    run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=venv.parent)
    run(
        [*PIP, "--python", venv / "bin" / "python", "install", "-q", "--no-deps", wheel],
        venv.parent,
    )
    (site_packages,) = venv.glob("lib/python*/site-packages")
    (site_packages / "borrowed-training-extra.pth").write_text("\n".join(site.getsitepackages()))
    yield venv
    shutil.rmtree(venv)


def installed_package(venv: Path, cwd: Path) -> Path:
    """Where the venv's `captioner` package is imported from."""
    script = "import captioner; print(captioner.__file__)"
    return Path(run([venv / "bin" / "python", "-c", script], cwd).stdout.strip()).parent


@pytest.fixture
def photo_file(photo, tmp_path: Path) -> Path:
    path = tmp_path / "photo.jpg"
    photo.save(path, quality=92)
    return path


def test_the_plain_install_has_the_wheels_package_and_no_training_packages(venv, tmp_path):
    script = (
        "import importlib.metadata as m, json, captioner; "
        "print(json.dumps([captioner.__file__, [d.metadata['Name'] for d in m.distributions()]]))"
    )
    location, installed = json.loads(run([venv / "bin" / "python", "-c", script], tmp_path).stdout)
    assert Path(location).is_relative_to(venv)  # the installed wheel, not the checkout
    assert (Path(location).parent / "built_page" / "index.html").is_file()
    assert not TRAINING_DISTRIBUTIONS & {normalised(name) for name in installed}


def test_help_and_caption_run_from_the_plain_install_without_torch(venv, photo_file, tmp_path):
    help_text = run([venv / "bin" / "captioner", "--help"], tmp_path).stdout
    assert "caption" in help_text and "serve" in help_text
    # -X importtime lists every module the command imported, on stderr.
    python, captioner = venv / "bin" / "python", venv / "bin" / "captioner"
    done = run([python, "-X", "importtime", captioner, "caption", photo_file], tmp_path)
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1 and re.search(r"[a-z]{2,} [a-z]{2,}", lines[0]), done.stdout
    imported = {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in done.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "captioner" in imported
    assert not TRAINING_MODULES & imported


def test_serve_from_the_plain_install_answers_the_page_and_the_api(venv, photo_file, tmp_path):
    caption = run([venv / "bin" / "captioner", "caption", photo_file], tmp_path).stdout.strip()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [venv / "bin" / "captioner", "serve", "--port", str(port)],
        cwd=tmp_path,
        env=outside_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            assert server.poll() is None, f"the server exited: {server.stderr.read()}"
            assert time.monotonic() < deadline, "the server did not answer /api/health"
            try:
                if httpx.get(f"{base}/api/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.3)
        page = httpx.get(f"{base}/", timeout=30)
        assert page.status_code == 200
        assert page.content == (BUILT_PAGE / "index.html").read_bytes()
        with photo_file.open("rb") as image:
            answer = httpx.post(
                f"{base}/api/caption",
                files={"file": ("photo.jpg", image, "image/jpeg")},
                data={"attention": "false"},
                timeout=60,
            )
        assert answer.status_code == 200, answer.text
        assert answer.json()["caption"] == caption
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_export_web_from_the_installed_wheel_writes_the_packaged_page(
    venv, venv_with_training, tmp_path
):
    # The plain install copies the bundled model's int8 graphs: no torch needed.
    run([venv / "bin" / "captioner", "export", "flickr8k-effnet", "--web", "site"], tmp_path)
    plain_site = tmp_path / "site"
    assert (plain_site / "index.html").read_bytes() == (BUILT_PAGE / "index.html").read_bytes()
    assert (plain_site / "model" / "captioner.json").is_file()
    # A model with PyTorch weights only is exported from them, with the training extra.
    assert installed_package(venv_with_training, tmp_path).is_relative_to(venv_with_training)
    model_dir = save_tiny_model(tmp_path / "tiny")
    site_dir = tmp_path / "tiny-site"
    run(
        [venv_with_training / "bin" / "captioner", "export", model_dir, "--web", site_dir], tmp_path
    )
    assert (site_dir / "index.html").read_bytes() == (BUILT_PAGE / "index.html").read_bytes()
    assert (site_dir / "model" / "captioner.json").is_file()
