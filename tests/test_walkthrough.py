"""The README's walkthrough, typed as a user types it: 40 photos and a Kaggle-style captions.txt
in a folder, then `captioner train --preset small`, `eval`, `caption` and `serve` on the result.

The only departure from the README is `--set epochs=2`: the preset's 30 epochs (with early
stopping) take minutes on two cores, and every command is exercised as well by two.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
from conftest import require_flickr8k

PHOTOS = 40


def captioner(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", "captioner", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def make_photo_folder(folder: Path) -> list[str]:
    """`folder/images/*.jpg` and `folder/captions.txt` (`image,caption`, a row per caption)."""
    rows = (require_flickr8k() / "captions.jsonl").read_text().splitlines()[:PHOTOS]
    (folder / "images").mkdir(parents=True)
    names = []
    with open(folder / "captions.txt", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["image", "caption"])
        for row in map(json.loads, rows):
            source = require_flickr8k() / row["image"]
            shutil.copy(source, folder / "images" / source.name)
            names.append(source.name)
            writer.writerows([source.name, caption] for caption in row["captions"])
    return names


def test_the_walkthrough_trains_scores_captions_and_serves_your_own_photos(tmp_path):
    names = make_photo_folder(tmp_path / "mine")

    done = captioner(
        "train", "--preset", "small", "--data", "mine", "--output-dir", "runs/mine",
        "--set", "epochs=2", cwd=tmp_path,
    )  # fmt: skip
    # The split the data lacked is said in one line, with how to change it.
    (line,) = [text for text in done.stderr.splitlines() if "has no train/dev/test split" in text]
    assert "photos went to train" in line and "--set data_split.dev_fraction=" in line
    # The encoder's grids went to the user's cache folder, not into the working directory.
    assert not (tmp_path / "cache").exists()
    assert (Path(os.environ["CAPTIONER_CACHE_DIR"]) / "features").is_dir()

    scores = json.loads(
        captioner("eval", "--model", "runs/mine", "--data", "mine", "--json", cwd=tmp_path).stdout
    )
    # The model card's figures are what `captioner eval` prints, and say what they measured.
    config = json.loads((tmp_path / "runs/mine/best/config.json").read_text())
    recorded = config["metadata"]["evaluation"]
    assert recorded["images"] == scores["images"] and recorded["split"] == "dev"
    for name, value in recorded["metrics"].items():
        assert abs(value - scores[name]) < 1e-4, name
    card = (tmp_path / "runs/mine/best/README.md").read_text()
    assert f"On the {scores['images']} images of the `dev` split" in card
    assert f"| {scores['cider']:.4g} |" in card

    photo = f"mine/images/{names[0]}"
    caption = captioner("caption", "--model", "runs/mine", photo, cwd=tmp_path).stdout
    assert caption.strip()

    server = subprocess.Popen(
        [sys.executable, "-m", "captioner", "serve", "--model", "runs/mine", "--port", "0"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert server.stdout is not None
        announced = server.stdout.readline()  # "captioner: serving on http://127.0.0.1:PORT"
        assert "serving on http://" in announced, announced
        url = announced.split("serving on ")[1].strip()
        with open(tmp_path / photo, "rb") as image:
            answer = httpx.post(f"{url}/api/caption", files={"file": image}, timeout=120)
        assert answer.status_code == 200 and answer.json()["caption"].strip()
    finally:
        server.terminate()
        server.wait(timeout=60)
