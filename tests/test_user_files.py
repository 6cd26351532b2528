"""Issue 18 for collections: a file captioner did not write is never replaced, any name the file
system allows round-trips through JSONL and CSV, walks and globs end, and every bad input is one
clear error before any work."""

from __future__ import annotations

import json
import os
import resource
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from test_collection import fast, make_folder, make_image, rows_of

from captioner.cli import main
from captioner.collection import CollectionJob, RowFile, caption_collection, find_images, read_list


@pytest.fixture(scope="module")
def model_dir(tiny_model, tmp_path_factory):
    return tiny_model.save_pretrained(tmp_path_factory.mktemp("model"))


# ---- rule 1: a file captioner did not write is never replaced ---------------------------------
def test_a_users_own_sidecar_is_refused_unless_overwrite_names_it(tiny_captioner, tmp_path):  # D7
    make_folder(tmp_path, 2, ".jpg")
    mine = tmp_path / "img001.txt"
    mine.write_text("my own notes\n")
    with pytest.raises(ValueError, match="img001.txt exists and was not written by captioner"):
        caption_collection(tiny_captioner, [tmp_path], fast(sidecar=".txt"))
    assert mine.read_text() == "my own notes\n"
    assert not (tmp_path / "img000.txt").exists()  # refused before any work
    summary = caption_collection(tiny_captioner, [tmp_path], fast(sidecar=".txt", overwrite=True))
    assert summary.captioned == 2 and mine.read_text() != "my own notes\n"
    # now captioner's own: a rerun finds both done, no --overwrite needed
    assert caption_collection(tiny_captioner, [tmp_path], fast(sidecar=".txt")).already_done == 2


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_sidecar_suffix_that_is_an_image_format_is_refused(tiny_captioner, tmp_path, overwrite):
    photo = make_image(tmp_path / "a.jpg", 0)  # D7: a.png must never become text
    other = make_image(tmp_path / "a.png", 1)
    before = other.read_bytes()
    with pytest.raises(ValueError, match=r"sidecar .png is an image format"):
        caption_collection(tiny_captioner, [photo], fast(sidecar=".png", overwrite=overwrite))
    assert other.read_bytes() == before


def test_a_sidecar_is_never_the_output(tiny_captioner, tmp_path):  # D14
    folder = tmp_path / "dir"
    make_image(folder / "captions.jpg", 0)
    output = folder / "captions.jsonl"
    caption_collection(tiny_captioner, [folder], fast(output=output), num_beams=1)
    before = output.read_bytes()
    with pytest.raises(ValueError, match="would overwrite"):
        caption_collection(tiny_captioner, [folder], fast(output=output, sidecar=".jsonl"))
    assert output.read_bytes() == before


def test_the_output_is_never_the_data_sets_caption_file(model_dir, tmp_path, capsys):  # D5
    data = tmp_path / "tiny"
    lines = []
    for i in range(2):
        make_image(data / "images" / f"p{i}.jpg", i)
        lines.append(json.dumps({"image": f"images/p{i}.jpg", "captions": ["a dog ."]}))
    annotations = data / "captions.jsonl"
    annotations.write_text("\n".join(lines) + "\n")
    before = annotations.read_bytes()
    model = ["--model", str(model_dir), "-q"]
    code = main(["caption", "--data", str(data), "-o", str(annotations), *model])
    assert code == 2 and "the data set's own caption file" in capsys.readouterr().err
    # named only as an output, its rows are not captioner's: refused, not appended to
    code = main(["caption", str(data / "images"), "-o", str(annotations), *model])
    assert code == 2 and "is not a caption row written by captioner" in capsys.readouterr().err
    assert annotations.read_bytes() == before


def test_an_output_has_one_writer_at_a_time(tiny_captioner, tmp_path):  # D6
    make_folder(tmp_path / "photos", 2)
    output = tmp_path / "out.jsonl"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path;"
            "from captioner.collection.rows import OutputLock;"
            f"OutputLock(Path({str(output)!r})).acquire(); print('held', flush=True);"
            "sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(ValueError, match="another captioner job is writing"):
            caption_collection(tiny_captioner, [tmp_path / "photos"], fast(output=output))
    finally:
        holder.communicate("")
    # within one process too, while a job that has not finished holds it
    first = CollectionJob(tiny_captioner, [tmp_path / "photos"], fast(output=output))
    with pytest.raises(ValueError, match="another captioner job is writing"):
        CollectionJob(tiny_captioner, [tmp_path / "photos"], fast(output=output))
    first.run()
    assert len(rows_of(output)) == 2
    assert not (tmp_path / ".out.jsonl.lock").exists()  # removed by the job that held it
    assert (
        caption_collection(tiny_captioner, [tmp_path / "photos"], fast(output=output)).captioned
        == 0
    )


# ---- rule 2: any file name round-trips --------------------------------------------------------
ODD_NAMES = [
    os.fsdecode(b"bad\xff.png"),  # not UTF-8 (D1)
    "carriage\rreturn.png",  # D3
    "new\nline.png",
    "line\u2028separator.png",  # D4
    'quote"comma,.png',
]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_any_file_name_round_trips_and_resumes(tiny_captioner, tmp_path, suffix):
    photos = tmp_path / "photos"
    for i, name in enumerate(ODD_NAMES):
        make_image(photos / name, i)
    output = tmp_path / f"out{suffix}"
    config = fast(output=output, prefix="\u2028 ")  # a separator in every caption, too (D4)
    first = caption_collection(tiny_captioner, [photos], config, num_beams=1)
    assert (first.captioned, first.failed) == (len(ODD_NAMES), 0)
    rows = rows_of(output)
    assert sorted(row["image"] for row in rows) == sorted(ODD_NAMES)
    assert all(row["caption"].startswith("\u2028 ") for row in rows)
    if suffix == ".jsonl":
        lines = output.read_bytes().decode("utf-8").split("\n")  # valid UTF-8, one row a line
        assert len(lines) == len(ODD_NAMES) + 1 and lines[-1] == ""
    again = caption_collection(tiny_captioner, [photos], config, num_beams=1)
    assert (again.already_done, again.captioned) == (len(ODD_NAMES), 0)


def test_a_csv_cut_inside_a_quoted_name_is_a_cut_row(tiny_captioner, tmp_path):  # D15
    photos = tmp_path / "photos"
    make_image(photos / "a.png", 0)
    make_image(photos / "two\nlines.png", 1)
    output = tmp_path / "out.csv"
    caption_collection(tiny_captioner, [photos], fast(output=output), num_beams=1)
    text = output.read_bytes()
    cut = text[: text.index(b"two\n") + len(b"two\n")]  # ends inside the quoted name
    output.write_bytes(cut)
    rows, torn = RowFile(output).read()
    assert [row["image"] for row in rows] == ["a.png"] and torn
    again = caption_collection(tiny_captioner, [photos], fast(output=output), num_beams=1)
    assert (again.already_done, again.captioned) == (1, 1)
    assert sorted(row["image"] for row in rows_of(output)) == ["a.png", "two\nlines.png"]


def test_csv_cells_that_would_run_as_formulas_are_neutralised(tiny_captioner, tmp_path):  # D2
    names = ['=HYPERLINK("x.example";"y").png', "+1.png", "-1.png", "@a.png", "'q.png"]
    for i, name in enumerate(names):
        make_image(tmp_path / "photos" / name, i)
    output = tmp_path / "out.csv"
    caption_collection(tiny_captioner, [tmp_path / "photos"], fast(output=output), num_beams=1)
    lines = output.read_text().splitlines()[1:]
    assert len(lines) == len(names) and all(line.startswith("\"'") for line in lines)
    assert sorted(row["image"] for row in rows_of(output)) == sorted(names)


def test_files_written_get_the_users_umask(tiny_captioner, tmp_path):  # D8
    make_folder(tmp_path / "photos", 1, ".jpg")
    old = os.umask(0o022)
    try:
        output = tmp_path / "out.csv"
        caption_collection(
            tiny_captioner, [tmp_path / "photos"], fast(output=output, sidecar=".txt")
        )
        RowFile(output).rewrite(rows_of(output))  # as a resume or a merge rewrites it
        for path in (output, tmp_path / "photos" / "img000.txt"):
            assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
        os.umask(0o077)
        make_folder(tmp_path / "private", 1, ".jpg")
        caption_collection(tiny_captioner, [tmp_path / "private"], fast(sidecar=".txt"))
        assert stat.S_IMODE((tmp_path / "private" / "img000.txt").stat().st_mode) == 0o600
    finally:
        os.umask(old)


# ---- rule 3: walks and globs end --------------------------------------------------------------
def test_globs_and_walks_do_not_follow_a_symlink_loop(tmp_path, monkeypatch):  # D9
    make_image(tmp_path / "col" / "a.png", 0)
    make_image(tmp_path / "col" / "sub" / "b.png", 1)
    (tmp_path / "col" / "sub" / "up").symlink_to(tmp_path / "col")
    (tmp_path / "col" / "loop").symlink_to(tmp_path / "col")
    monkeypatch.chdir(tmp_path)
    names = [item.name for item in find_images(["col/**/*.png"])]
    assert names == ["col/a.png", "col/sub/b.png"]
    walked = [item.name for item in find_images([tmp_path / "col"], recursive=True)]
    assert walked == ["a.png", "sub/b.png"]
    with pytest.raises(ValueError, match="no file matches the pattern 'col/\\*\\*/\\*.gif'"):
        find_images(["col/**/*.gif"])  # D12: said, not silently nothing


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a folder whatever its mode")
def test_a_sub_folder_that_cannot_be_read_is_an_error_row(tiny_captioner, tmp_path):  # D11
    make_image(tmp_path / "photos" / "a.png", 0)
    locked = tmp_path / "photos" / "locked"
    make_image(locked / "b.png", 1)
    locked.chmod(0)
    try:
        rows = []
        summary = caption_collection(
            tiny_captioner, [tmp_path / "photos"], fast(recursive=True), rows.append
        )
        named = []  # D10: a file named inside it, an error row rather than a traceback
        caption_collection(tiny_captioner, [locked / "b.png"], fast(), named.append)
    finally:
        locked.chmod(0o755)
    assert summary.failed == 1
    assert "cannot read the folder" in next(r["error"] for r in rows if r["image"] == "locked/")
    assert "cannot read it: Permission denied" in named[0]["error"]


# ---- heatmaps ---------------------------------------------------------------------------------
def test_heatmaps_inside_the_captioned_folder_are_not_captioned(tiny_captioner, tmp_path):  # D13
    photos = tmp_path / "photos"
    make_image(photos / "a.png", 0)
    config = fast(attention_dir=photos / "heat", recursive=True)
    first = caption_collection(tiny_captioner, [photos], config, max_new_tokens=3)
    assert list((photos / "heat" / "a").glob("*.png"))
    rows = []
    again = caption_collection(tiny_captioner, [photos], config, rows.append, max_new_tokens=3)
    assert [row["image"] for row in rows] == ["a.png"] and again.total == first.total == 1
    assert not (photos / "heat" / "heat").exists()


def test_two_images_never_share_a_heatmap_folder(tiny_captioner, tmp_path):  # D21
    with_suffix = make_image(tmp_path / "y.jpg", 0)
    without = make_image(tmp_path / "y", 1)
    rows = []
    config = fast(attention_dir=tmp_path / "out")
    caption_collection(
        tiny_captioner, [with_suffix, without], config, rows.append, max_new_tokens=3
    )
    folders = [row["attention_dir"] for row in rows]
    assert len(set(folders)) == 2
    for row in rows:
        assert len(list(Path(row["attention_dir"]).glob("*.png"))) == len(row["tokens"])


# ---- rule 5: one line, before any work ------------------------------------------------------
def test_outputs_of_the_wrong_kind_are_refused_before_any_work(tiny_captioner, tmp_path):  # D10
    photo = make_image(tmp_path / "a.jpg", 0)
    (tmp_path / "folder.jsonl").mkdir()
    with pytest.raises(ValueError, match="folder.jsonl is not a file"):
        caption_collection(tiny_captioner, [photo], fast(output=tmp_path / "folder.jsonl"))
    (tmp_path / "a.txt").mkdir()
    with pytest.raises(ValueError, match="a.txt, is not a file"):
        caption_collection(tiny_captioner, [photo], fast(sidecar=".txt"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="file is not a folder"):
        caption_collection(tiny_captioner, [photo], fast(attention_dir=tmp_path / "file"))
    with pytest.raises(ValueError, match="cannot write /proc/captioner-heat"):
        caption_collection(
            tiny_captioner, [photo], fast(attention_dir=Path("/proc/captioner-heat"))
        )
    with pytest.raises(ValueError, match="cannot write /proc/captions.jsonl: No such file"):
        caption_collection(tiny_captioner, [photo], fast(output=Path("/proc/captions.jsonl")))
    with pytest.raises(ValueError, match="out.jsonl: .*file is not a folder"):
        caption_collection(tiny_captioner, [photo], fast(output=tmp_path / "file" / "out.jsonl"))


def test_names_that_are_not_utf8_print_on_standard_output(model_dir, tmp_path):  # D1
    make_image(tmp_path / os.fsdecode(b"bad\xff.png"), 0)
    make_image(tmp_path / "good.png", 1)  # two images: each line starts with its name
    command = [sys.executable, "-m", "captioner", "caption", str(tmp_path), "-q"]
    command += ["--model", str(model_dir), "--workers", "0"]
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}  # strict, as a UTF-8 terminal is
    plain = subprocess.run(command, capture_output=True, timeout=300, env=env)
    assert plain.returncode == 0, plain.stderr.decode()
    assert plain.stdout.decode("utf-8").startswith("bad\\xff.png\t")  # shown, escaped
    lines = subprocess.run([*command, "--json"], capture_output=True, timeout=300, env=env)
    first = lines.stdout.decode("utf-8").splitlines()[0]
    assert json.loads(first)["image"] == os.fsdecode(b"bad\xff.png")


def _file_size_limit(limit: int):
    """For a child process: writes past `limit` bytes fail (EFBIG), as on a full disk."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an error from write(), not a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_write_that_fails_mid_run_is_one_line_and_exit_1(model_dir, tmp_path):  # D10
    make_folder(tmp_path / "photos", 1)
    output = tmp_path / "captions.jsonl"
    command = [sys.executable, "-m", "captioner", "caption", str(tmp_path / "photos")]
    command += ["--model", str(model_dir), "-o", str(output), "-q", "--batch-size", "1"]
    command += ["--workers", "0"]  # loader processes share memory through files: one process
    first = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr  # and the model's cached graphs are written
    make_folder(tmp_path / "photos", 3)
    limit = _file_size_limit(output.stat().st_size + 40)  # room for a part of the next row
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, preexec_fn=limit)
    assert done.returncode == 1
    assert done.stderr.strip() == f"captioner: cannot write {output}: File too large"
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert sorted(row["image"] for row in rows_of(output)) == [f"img{i:03d}.png" for i in range(3)]


def test_temporary_files_a_killed_rewrite_left_are_removed(tiny_captioner, tmp_path):  # rule 4
    make_folder(tmp_path / "photos", 1)
    output = tmp_path / "out.csv"
    left = [tmp_path / ".out.csv.abc123.tmp", tmp_path / ".out.part-1.csv.x.tmp"]
    for path in left:
        path.write_text("half a file")
    mine = tmp_path / ".out.csv.notes"  # not one of the job's temporary files
    mine.write_text("mine")
    caption_collection(tiny_captioner, [tmp_path / "photos"], fast(output=output))
    assert not any(path.exists() for path in left) and mine.read_text() == "mine"


def test_a_list_file_keeps_any_name_whole(tmp_path, monkeypatch):  # rule 2, --from-list
    names = ["line\u2028separator.png", os.fsdecode(b"bad\xff.png"), "form\x0cfeed.png"]
    for i, name in enumerate(names):
        make_image(tmp_path / name, i)
    listing = "# three odd names\r\n" + "".join(f"  {name}\r\n" for name in names) + "\n"
    (tmp_path / "list.txt").write_bytes(os.fsencode(listing))
    monkeypatch.chdir(tmp_path)
    sources = read_list("list.txt")
    assert sources == names
    assert [item.name for item in find_images(sources)] == names
