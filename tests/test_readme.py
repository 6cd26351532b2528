"""The README, checked as a user reads it: every `captioner` command it shows is one the command
line accepts (flags, presets and `--set` keys included), every file and script it points to
exists, and its Python quick start runs against the bundled model.

The commands themselves run elsewhere: tests/test_walkthrough.py follows "Your own data" from
training to serving, tests/test_wheel.py captions and serves from an installed wheel, and the
end-to-end tests (`make test`) drive the page and the browser site.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from captioner.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def commands() -> list[list[str]]:
    """Each `captioner ...` line of the README's shell blocks, as the shell splits it."""
    lines = [line for block in code_blocks("bash") for line in block.splitlines()]
    return [shlex.split(line, comments=True) for line in lines if line.startswith("captioner ")]


def test_the_readme_stays_short_enough_to_read():
    assert len(README.splitlines()) <= 210


@pytest.mark.parametrize("argv", commands(), ids=" ".join)
def test_every_readme_command_is_accepted_by_the_command_line(argv):
    args = build_parser().parse_args(argv[1:])  # exits 2 on an unknown flag or value
    if args.command == "train" and not args.resume:  # a resumed run reads its own folder
        from captioner.cli.train import training_config

        config = training_config(args)  # the preset, every --set key and value, checked
        assert config.validate() is config


def test_every_file_the_readme_names_exists():
    linked = re.findall(r"\]\(((?:docs|bench|src|frontend)/[^)#\s]+|BENCHMARKS\.md)\)", README)
    scripts = re.findall(r"python (bench/\w+\.py)", README)
    for path in {*linked, *scripts}:
        assert (REPO / path).exists(), path


def test_the_python_quick_start_runs(tmp_path, monkeypatch):
    (block,) = [b for b in code_blocks("python") if "import captioner" in b]
    monkeypatch.chdir(tmp_path)
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (240, 320, 3), np.uint8))
    photo.save("dog.jpg")
    photo.save("beach.png")
    namespace: dict = {"image": photo}
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - the README's own code
    best = namespace["best"]
    assert best.to_pipeline()[0]["generated_text"] == best.text
    assert len(best.to_pipeline()) == 3
    assert namespace["results"][0].attention.ndim == 5
