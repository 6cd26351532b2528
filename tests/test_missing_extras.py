"""A command whose extra is not installed says so in one line, exit code 2, before any work;
`export --web` of a model that has its int8 graphs needs none of it.

Each case runs the command line in a fresh interpreter where the module is made unimportable
(`sys.modules[name] = None`, which makes `import name` fail as if it were not installed), and
gives it real inputs, so that a command that started working first would leave files behind.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_model import save_tiny_model
from training_data import make_colour_dataset

from captioner.hub import BUNDLED_DIR, DESCRIPTION_FILE
from captioner.page import CHECKOUT_PAGE_DIR

INSTALL_HINT = "pip install 'captioner[train]'"

# Blocks the modules named in argv[1] (comma-separated), then runs `captioner argv[2:]`.
RUN_WITHOUT = """
import sys
for name in sys.argv[1].split(","):
    sys.modules[name] = None
from captioner.cli import main
sys.exit(main(sys.argv[2:]))
"""


# What a plain install (`pip install captioner`) lacks of the training extra.
PLAIN_INSTALL_LACKS = "torch,transformers,lightning,onnx"


def run_without(modules: str, argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", RUN_WITHOUT, modules, *argv],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_colour_dataset(tmp_path_factory.mktemp("colours"))


def command_line(command: str, dataset: Path, work: Path) -> tuple[list[str], Path]:
    """The arguments of a real run of `command`, and the path that run would create."""
    if command == "train":
        output = work / "run"
        return ["train", "--data", str(dataset), "--output-dir", str(output)], output
    if command == "eval":
        output = work / "predictions.jsonl"
        return ["eval", "--data", str(dataset), "--predictions", str(output)], output
    if command == "features":
        output = work / "features-cache"
        return ["features", "--data", str(dataset), "--cache-dir", str(output)], output
    output = work / "onnx"
    return ["export", "flickr8k-effnet", "--onnx", str(output)], output


@pytest.mark.parametrize(
    ("command", "missing"),
    [
        ("train", "lightning"),
        ("eval", "pycocoevalcap"),
        ("export", "onnx"),
        # A plain install has none of torch, transformers or lightning.
        ("train", "torch,transformers,lightning"),
        ("eval", "torch,transformers,lightning"),
        ("features", "torch,transformers,lightning"),
        ("export", "torch,transformers,lightning"),
    ],
)
def test_a_missing_extra_is_one_line_and_exit_2_before_any_work(
    command, missing, dataset, tmp_path
):
    argv, output = command_line(command, dataset, tmp_path)
    done = run_without(missing, argv, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"captioner: {command} needs the training extra: {INSTALL_HINT}")
    assert missing.split(",")[0] in lines[0]  # names what is missing
    assert not output.exists()
    assert done.stdout == ""


def test_export_web_of_a_model_with_only_pytorch_weights_names_the_extra(tmp_path):
    model_dir = save_tiny_model(tmp_path / "tiny")
    site = tmp_path / "site"
    done = run_without(
        PLAIN_INSTALL_LACKS, ["export", str(model_dir), "--web", str(site)], tmp_path
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr == (
        f"captioner: export needs the training extra: {INSTALL_HINT} (missing: torch, onnx; "
        f"{model_dir} has no int8 ONNX graphs for --web to copy)\n"
    )
    assert not site.exists()


def test_export_web_of_the_bundled_model_copies_its_graphs_without_the_extra(tmp_path):
    if not (CHECKOUT_PAGE_DIR / "index.html").is_file():
        pytest.skip("the page is not built (frontend/dist): run `make frontend`")
    site = tmp_path / "site"
    done = run_without(
        PLAIN_INSTALL_LACKS, ["export", "flickr8k-effnet", "--web", "site"], tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert (site / "index.html").read_bytes() == (CHECKOUT_PAGE_DIR / "index.html").read_bytes()
    description = json.loads((site / "model" / DESCRIPTION_FILE).read_text())
    assert list(description["variants"]) == ["int8"]
    bundled = json.loads((BUNDLED_DIR / DESCRIPTION_FILE).read_text())
    for graph, stored in description["variants"]["int8"].items():
        name = bundled["variants"]["int8"][graph]
        data = (site / "model" / stored).read_bytes()
        assert (gzip.decompress(data) if stored == f"{name}.gz" else data) == (
            BUNDLED_DIR / name
        ).read_bytes()
    description["variants"] = bundled["variants"]  # the rest is the bundled model's own
    assert description == bundled
