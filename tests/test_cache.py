"""Where the encoder grids go: the user's cache folder, never the directory a command runs in."""

from pathlib import Path

import pytest

from captioner.cache import features_dir
from captioner.cli import build_parser


def test_features_go_to_the_user_cache_folder_unless_told(monkeypatch, tmp_path):
    monkeypatch.setenv("CAPTIONER_CACHE_DIR", str(tmp_path / "mine"))
    assert features_dir() == tmp_path / "mine" / "features"
    monkeypatch.delenv("CAPTIONER_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert features_dir() == tmp_path / "xdg" / "captioner" / "features"
    assert features_dir("~/grids") == Path.home() / "grids"  # --cache-dir wins


@pytest.mark.parametrize("command", ["train", "eval", "features"])
def test_the_cache_flag_says_where_the_default_is(command, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--cache-dir" in text and "$CAPTIONER_CACHE_DIR/features" in text
