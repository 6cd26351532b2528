"""Captioning collections: inputs, output files, resuming (after SIGKILL too), sidecars, options,
and the same job over two processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from captioner.collection import (
    CollectionConfig,
    ImageItem,
    RowFile,
    caption_collection,
    dataset_images,
    find_images,
)
from captioner.collection.job import attention_folders
from captioner.collection.rows import SIDECAR_MANIFEST, encode_rows

REPO = Path(__file__).resolve().parents[1]


def make_image(path: Path, seed: int, size: tuple[int, int] = (48, 40)) -> Path:
    """A small picture that differs with `seed` (noise over a gradient)."""
    generator = np.random.default_rng(seed)
    pixels = generator.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    pixels[: size[1] // 2] //= 2
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="JPEG" if path.suffix == ".jpg" else "PNG")
    return path


def make_folder(root: Path, count: int, suffix: str = ".png") -> list[Path]:
    return [make_image(root / f"img{i:03d}{suffix}", i) for i in range(count)]


def make_truncated(path: Path) -> Path:
    """An image file cut short: recognised as a PNG by its header, fails to decode."""
    make_image(path, 99, (200, 150))
    path.write_bytes(path.read_bytes()[:300])
    return path


def rows_of(path: Path) -> list[dict]:
    return RowFile(path).read()[0]


def fast(**values) -> CollectionConfig:
    """No loader processes and no bar: what most tests need."""
    return CollectionConfig(num_workers=0, progress=False, **values)


@pytest.fixture(scope="module")
def model_dir(tiny_model, tmp_path_factory):
    return tiny_model.save_pretrained(tmp_path_factory.mktemp("model"))


# ---- inputs ---------------------------------------------------------------------------------
def test_folders_are_read_by_content_recursively_on_request(tiny_captioner, tmp_path):
    photos = tmp_path / "photos"
    make_image(photos / "a.png", 0)
    make_image(photos / "odd-name.data", 1)  # an image whatever its suffix
    make_image(photos / "sub" / "b.jpg", 2)
    make_image(photos / "sub" / "deeper" / "c.png", 3)
    make_image(photos / ".hidden" / "d.png", 4)
    (photos / "notes.txt").write_text("not an image")
    (photos / "sub" / "index.html").write_text("<html></html>")

    shallow = find_images([photos])
    assert [item.name for item in shallow] == ["a.png", "notes.txt", "odd-name.data"]
    rows = []
    summary = caption_collection(tiny_captioner, shallow, fast(), rows.append, num_beams=1)
    assert [row["image"] for row in rows] == ["a.png", "odd-name.data"]
    assert (summary.captioned, summary.not_images, summary.failed) == (2, 1, 0)

    rows = []
    summary = caption_collection(
        tiny_captioner, [photos], fast(recursive=True), rows.append, num_beams=1
    )
    names = [row["image"] for row in rows]
    assert names == ["a.png", "odd-name.data", "sub/b.jpg", "sub/deeper/c.png"]
    assert all(row["caption"] and row["tokens"] for row in rows)
    assert summary.not_images == 2 and summary.failed == 0


def test_globs_lists_and_named_files(tmp_path, monkeypatch):
    make_folder(tmp_path / "a", 3)
    make_image(tmp_path / "b" / "x.png", 9)
    monkeypatch.chdir(tmp_path)
    items = find_images(["a/*.png", "b/x.png", "a/img000.png", "missing.png"])
    # the same file reached twice is captioned once; a missing one is kept (a per-image error)
    assert [item.name for item in items] == [
        "a/img000.png",
        "a/img001.png",
        "a/img002.png",
        "b/x.png",
        "missing.png",
    ]
    assert not any(item.in_folder for item in items)


def test_two_files_with_one_name_are_refused(tmp_path):
    make_image(tmp_path / "a" / "x.png", 0)
    make_image(tmp_path / "b" / "x.png", 1)
    with pytest.raises(ValueError, match="would both be named 'x.png'"):
        find_images([tmp_path / "a", tmp_path / "b"])
    # their parent folder names them apart
    names = [item.name for item in find_images([tmp_path], recursive=True)]
    assert names == ["a/x.png", "b/x.png"]


def test_dataset_source_is_read_with_load_records(tiny_captioner, tmp_path):
    data = tmp_path / "data"
    lines = []
    for i, split in enumerate(["train", "dev", "dev"]):
        make_image(data / "images" / f"p{i}.jpg", i)
        record = {"image": f"images/p{i}.jpg", "image_id": f"p{i}", "split": split}
        lines.append(json.dumps({**record, "captions": ["a picture ."]}))
    (data / "captions.jsonl").write_text("\n".join(lines) + "\n")
    items = dataset_images(data, "dev")
    assert [item.name for item in items] == ["images/p1.jpg", "images/p2.jpg"]
    rows = []
    caption_collection(tiny_captioner, items, fast(), rows.append, num_beams=1)
    assert [row["image"] for row in rows] == ["images/p1.jpg", "images/p2.jpg"]
    with pytest.raises(ValueError, match="no images in split 'test' of"):
        dataset_images(data, "test")  # a split the data set does not have, said as such


def test_unreadable_images_are_error_rows_and_the_rest_go_on(tiny_captioner, tmp_path):
    good = make_image(tmp_path / "good.jpg", 0, (120, 90))
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(good.read_bytes()[:200])
    (tmp_path / "text.png").write_text("hello")
    output = tmp_path / "out.jsonl"
    sources = [good, cut, tmp_path / "text.png", tmp_path / "nope.png"]
    summary = caption_collection(tiny_captioner, sources, fast(output=output), num_beams=1)
    rows = {Path(row["image"]).name: row for row in rows_of(output)}
    assert rows["good.jpg"]["caption"]
    assert "truncated" in rows["cut.jpg"]["error"]
    assert "not an image" in rows["text.png"]["error"]  # named explicitly: an error, not skipped
    assert "no such file" in rows["nope.png"]["error"]
    assert (summary.captioned, summary.failed) == (1, 3)


# ---- outputs --------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_output_formats_hold_one_row_an_image(tiny_captioner, tmp_path, suffix):
    make_folder(tmp_path / "photos", 5)
    make_truncated(tmp_path / "photos" / "bad.png")
    output = tmp_path / f"captions{suffix}"
    config = fast(output=output, batch_size=2)
    caption_collection(tiny_captioner, [tmp_path / "photos"], config, num_return_sequences=2)
    text = output.read_text()
    if suffix == ".csv":
        assert (
            text.splitlines()[0] == "image,caption,score,tokens,captions,scores,attention_dir,error"
        )
    else:
        assert all(json.loads(line) for line in text.splitlines())
    rows = rows_of(output)
    assert [row["image"] for row in rows] == ["bad.png", *[f"img{i:03d}.png" for i in range(5)]]
    captioned = [row for row in rows if "error" not in row]
    assert len(captioned) == 5
    for row in captioned:
        assert isinstance(row["score"], float) and row["tokens"]
        assert len(row["captions"]) == 2 and row["captions"][0] == row["caption"]
        assert row["scores"][0] >= row["scores"][1]
    assert "error" in next(row for row in rows if row["image"] == "bad.png")


def test_text_options_prefix_suffix_sentence_case(tiny_captioner, tmp_path):
    make_image(tmp_path / "a.png", 0)
    plain, styled = [], []
    caption_collection(tiny_captioner, [tmp_path / "a.png"], fast(), plain.append, num_beams=1)
    config = fast(prefix="sks, ", suffix=" [v1]", sentence_case=True)
    caption_collection(tiny_captioner, [tmp_path / "a.png"], config, styled.append, num_beams=1)
    text = plain[0]["caption"]
    sentence = text[0].upper() + text[1:] + ("" if text[-1] in ".!?" else ".")
    assert styled[0]["caption"] == f"sks, {sentence} [v1]"
    assert styled[0]["tokens"] == plain[0]["tokens"]


def test_sidecars_are_written_beside_each_image_and_resume(tiny_captioner, tmp_path):
    images = make_folder(tmp_path / "photos", 3, ".jpg")
    config = fast(sidecar=".txt", recursive=True)
    summary = caption_collection(
        tiny_captioner, [tmp_path / "photos"], config, num_return_sequences=2
    )
    assert summary.captioned == 3
    for image in images:
        lines = image.with_suffix(".txt").read_text().splitlines()
        assert len(lines) == 2 and all(lines)
    # no temporary files left behind; the manifest names the caption files captioner wrote
    hidden = list((tmp_path / "photos").glob(".*"))
    assert [path.name for path in hidden] == [SIDECAR_MANIFEST]
    assert sorted(json.loads(line) for line in hidden[0].read_text().splitlines()) == [
        f"img{i:03d}.txt" for i in range(3)
    ]
    # The sidecars are outputs, not inputs: a rerun finds all three done and skips nothing else.
    images[1].with_suffix(".txt").unlink()
    summary = caption_collection(tiny_captioner, [tmp_path / "photos"], config)
    assert (summary.already_done, summary.captioned, summary.not_images) == (2, 1, 0)
    assert images[1].with_suffix(".txt").read_text().strip()


def test_sidecars_that_would_collide_are_refused(tiny_captioner, tmp_path):
    make_image(tmp_path / "x.jpg", 0)
    make_image(tmp_path / "x.png", 1)
    with pytest.raises(ValueError, match="would share one .txt file"):
        caption_collection(tiny_captioner, [tmp_path], fast(sidecar=".txt"))
    make_image(tmp_path / "x.dat", 2)  # an image whatever its suffix
    with pytest.raises(ValueError, match="would overwrite"):
        caption_collection(
            tiny_captioner, [tmp_path / "x.jpg", tmp_path / "x.dat"], fast(sidecar=".dat")
        )


def test_attention_folders_mirror_the_relative_paths(tmp_path):
    items = [
        ImageItem("a/x.jpg", tmp_path / "a" / "x.jpg"),
        ImageItem("b/x.jpg", tmp_path / "b" / "x.jpg"),
        ImageItem("b/x.png", tmp_path / "b" / "x.png"),
    ]
    folders = {name: str(folder) for name, folder in attention_folders(items).items()}
    assert folders == {"a/x.jpg": "a/x", "b/x.jpg": "b/x", "b/x.png": "b/x.png"}


# ---- resuming -------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_resume_skips_done_retries_failed_and_drops_a_cut_line(tiny_captioner, tmp_path, suffix):
    photos = tmp_path / "photos"
    make_folder(photos, 4)
    make_truncated(photos / "broken.png")
    output = tmp_path / f"out{suffix}"
    first = caption_collection(tiny_captioner, [photos], fast(output=output), num_beams=1)
    assert (first.captioned, first.failed) == (4, 1)
    rows = rows_of(output)
    # Cut the last caption row in half, as a kill in the middle of a write would.
    kept = [row for row in rows if row["image"] != "img003.png"]
    RowFile(output).rewrite(kept)
    torn = encode_rows(suffix, [next(r for r in rows if r["image"] == "img003.png")])
    with open(output, "a") as file:
        file.write(torn[: len(torn) // 2])
    make_image(photos / "broken.png", 7)  # repaired since
    second = caption_collection(tiny_captioner, [photos], fast(output=output), num_beams=1)
    assert (second.already_done, second.captioned, second.failed) == (3, 2, 0)
    names = [row["image"] for row in rows_of(output)]
    assert sorted(names) == ["broken.png", *[f"img{i:03d}.png" for i in range(4)]]
    assert output.read_text().endswith("\n")
    # --overwrite captions everything again, still one row each
    third = caption_collection(tiny_captioner, [photos], fast(output=output, overwrite=True))
    assert third.captioned == 5 and len(rows_of(output)) == 5


def test_a_file_that_is_not_ours_is_refused_not_appended_to(tiny_captioner, tmp_path):
    make_image(tmp_path / "a.png", 0)
    output = tmp_path / "notes.jsonl"
    output.write_text("my own notes\n")
    with pytest.raises(ValueError, match="not a caption row written by captioner"):
        caption_collection(tiny_captioner, [tmp_path / "a.png"], fast(output=output))
    assert output.read_text() == "my own notes\n"


def test_sigkill_mid_run_then_rerun_captions_each_image_exactly_once(model_dir, tmp_path):
    total = 120
    make_folder(tmp_path / "photos", total)
    output = tmp_path / "captions.jsonl"
    command = [
        sys.executable,
        "-m",
        "captioner",
        "caption",
        str(tmp_path / "photos"),
        "--model",
        str(model_dir),
        "--output",
        str(output),
        "--batch-size",
        "2",
        "--num-beams",
        "1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if output.is_file() and output.read_bytes().count(b"\n") >= 6:
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    written = len(rows_of(output))
    assert 6 <= written < total, "the run must be killed part-way for this test to mean anything"

    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = output.read_text().splitlines()
    names = [json.loads(line)["image"] for line in lines]  # every line is valid JSON
    assert sorted(names) == [f"img{i:03d}.png" for i in range(total)]
    assert f"{written} already done" in done.stderr


# ---- many processes -------------------------------------------------------------------------
def test_two_cpu_processes_caption_the_same_rows_as_one(model_dir, tmp_path):
    photos = tmp_path / "photos"
    make_folder(photos, 11)
    (photos / "notes.txt").write_text("not an image")
    make_truncated(photos / "cut.png")
    base = [sys.executable, "-m", "captioner", "caption", str(photos), "--model", str(model_dir)]
    # One image a batch: the same arithmetic in both runs, so even the untrained model's near-ties
    # fall the same way.
    base += ["--num-beams", "2", "--batch-size", "1", "--workers", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = tmp_path / "single.jsonl"
    done = subprocess.run([*base, "-o", str(single)], env=env, capture_output=True, timeout=300)
    assert done.returncode == 1  # cut.png failed

    double = tmp_path / "double.jsonl"
    distributed = [*base, "-o", str(double), "--devices", "2", "--strategy", "ddp"]
    done = subprocess.run(distributed, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "1 failed" in done.stderr and "GLOBAL_RANK: 1, MEMBER: 2/2" in done.stderr
    assert done.stderr.count("captioned 11 of 13") == 1  # rank 0 sums up for all
    one, two = rows_of(single), rows_of(double)
    assert [row["image"] for row in two] == [row["image"] for row in one]  # each exactly once
    assert len(one) == 12
    assert {r["image"]: r.get("caption") for r in two} == {
        r["image"]: r.get("caption") for r in one
    }
    assert not list(tmp_path.glob("double.part-*"))  # merged into the one output

    # A rerun over two processes finds everything done and leaves the file as it was.
    before = double.read_text()
    done = subprocess.run(distributed, env=env, capture_output=True, text=True, timeout=300)
    assert "11 already done" in done.stderr and double.read_text().count("\n") == 12
    assert sorted(before.splitlines()) == sorted(double.read_text().splitlines())


def test_pipelined_runs_the_next_items_first_stage_during_this_ones_second():
    """The encoder of batch n + 1 runs while batch n decodes; results come in order, and an
    error in either stage reaches the caller."""
    import threading

    from captioner.collection.job import pipelined

    started = {item: threading.Event() for item in range(4)}
    seen = []

    def first(item: int) -> int:
        started[item].set()
        return item * 10

    def then(item: int, result: int) -> None:
        overlapped = item + 1 not in started or started[item + 1].wait(timeout=10)
        seen.append((item, result, overlapped))

    pipelined(range(4), first, then)
    assert seen == [(0, 0, True), (1, 10, True), (2, 20, True), (3, 30, True)]

    def failing(item: int) -> int:
        if item == 2:
            raise OSError("disk gone")
        return item

    done = []
    with pytest.raises(OSError, match="disk gone"):
        pipelined(range(4), failing, lambda item, _: done.append(item))
    assert done == [0, 1]


def test_distributed_ranks_start_loader_workers_without_forking_themselves(
    tiny_captioner, tmp_path
):
    """A rank's process runs the process group's threads: its loader workers come from a clean
    server process, not a fork of it (a forked child can hang on a lock a thread held)."""
    from captioner.collection.job import CollectionJob

    make_folder(tmp_path, 2)
    job = CollectionJob(tiny_captioner, [tmp_path], CollectionConfig(num_workers=1, progress=False))
    share = job.start()
    assert job.loader(share, fresh_workers=True).start_method in ("forkserver", "spawn")
    assert job.loader(share).start_method is None  # one process: fork is fine
    job.finish()


def test_batch_loader_keeps_order_and_bounds_what_runs_ahead(tmp_path):
    """Batches come back in order from worker processes; the reader being slow never lets more
    than BATCHES_AHEAD batches a worker be loaded ahead (memory stays bounded)."""
    from captioner.collection.loader import BATCHES_AHEAD, BatchLoader

    started = tmp_path / "started"
    started.mkdir()
    loader = BatchLoader(_TouchAndReturn(started), count=23, batch_size=4, workers=2)
    assert len(loader) == 6
    seen = []
    for batch in loader:
        seen.append(batch)
        if len(seen) == 1:
            time.sleep(0.5)  # a slow reader: the workers must stop ahead
            assert len(list(started.iterdir())) <= 1 + BATCHES_AHEAD * 2
    assert seen == [list(range(i, min(i + 4, 23))) for i in range(0, 23, 4)]
    in_process = BatchLoader(_TouchAndReturn(started), count=5, batch_size=2, workers=0)
    assert list(in_process) == [[0, 1], [2, 3], [4]]


class _TouchAndReturn:
    """Records each batch it starts as a file (visible across processes), returns its indices."""

    def __init__(self, folder):
        self.folder = folder

    def __call__(self, indices: list[int]) -> list[int]:
        (self.folder / f"batch-{indices[0]}").touch()
        return indices
