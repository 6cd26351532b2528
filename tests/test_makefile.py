"""`make test` on a machine without Chromium stops in one line instead of skipping the browser
tests; the check runs alone (`make chromium`), so this needs neither the venv nor npm."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def make(*args: str) -> subprocess.CompletedProcess:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    return subprocess.run(
        ["make", "-s", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=60
    )


def test_a_missing_chromium_stops_make_test_in_one_line(tmp_path):
    done = make("chromium", f"CHROME_PATH={tmp_path / 'no-chromium'}")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert f"Chromium is missing at {tmp_path / 'no-chromium'}" in lines[0]
    assert "apt-get install chromium" in lines[0] and "CHROME_PATH=" in lines[0]
    # `make test` checks it first, before installing or linting anything.
    plan = make("-n", "test", f"CHROME_PATH={tmp_path / 'no-chromium'}")
    assert plan.returncode == 2 and "Chromium is missing" in plan.stderr
    assert "pip install" not in plan.stdout


def test_an_existing_browser_passes_the_check(tmp_path):
    browser = tmp_path / "chromium"
    browser.write_text("#!/bin/sh\n")
    browser.chmod(0o755)
    assert make("chromium", f"CHROME_PATH={browser}").returncode == 0
