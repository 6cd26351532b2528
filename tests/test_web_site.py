"""`captioner export --web`: the static site (page + int8 model) the browser captions with.

The page itself is tested by Vitest and, captioning in Chromium, by frontend/e2e/."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from captioner.cli import main
from captioner.collection.job import CollectionConfig
from captioner.onnx.export import DESCRIPTION_FILE, export_onnx
from captioner.onnx.web import (
    EXPORT_MANIFEST,
    MODEL_DIR,
    SCRATCH_MARKER,
    compress_graphs,
    site_size,
    write_site,
    write_site_from_export,
)
from captioner.page import DEVICE_MODEL_FILE, PAGE_FILE, page_description

# Cases the page's sentence rule (frontend/src/sentence.ts, its Vitest test) is checked on too.
SENTENCE_CASES = Path(__file__).resolve().parents[1] / "frontend/src/sentence-case.cases.json"

pytest.importorskip("onnxruntime")


@pytest.fixture
def page_dir(tmp_path):
    """A stand-in for the built page (frontend/dist)."""
    page = tmp_path / "dist"
    (page / "assets").mkdir(parents=True)
    (page / "index.html").write_text("<!doctype html><title>captioner</title>")
    (page / "assets" / "index.js").write_text("console.log('page')")
    return page


@pytest.fixture(scope="module")
def site(tiny_model, tmp_path_factory):
    page = tmp_path_factory.mktemp("page")
    (page / "index.html").write_text("<!doctype html>")
    return write_site(tiny_model, tmp_path_factory.mktemp("out") / "site", page)


def test_the_site_is_the_page_and_the_int8_model_where_the_page_looks(site):
    assert (site / "index.html").is_file()
    description = json.loads((site / MODEL_DIR / DESCRIPTION_FILE).read_text())
    assert list(description["variants"]) == ["int8"]
    for name in description["variants"]["int8"].values():
        assert (site / MODEL_DIR / name).is_file()
    assert not (site / MODEL_DIR / "decoder_step.onnx").exists()  # no fp32 graphs: size
    assert site_size(site) == sum(p.stat().st_size for p in site.rglob("*") if p.is_file())


def test_the_site_keeps_the_decoder_graphs_gzipped_and_onnxruntime_loads_them(site):
    import onnxruntime as ort

    files = json.loads((site / MODEL_DIR / DESCRIPTION_FILE).read_text())["variants"]["int8"]
    assert files["image"].endswith(".gz") and files["step"].endswith(".gz")
    for name in (files["image"], files["step"]):
        packed = (site / MODEL_DIR / name).read_bytes()
        graph = gzip.decompress(packed)
        assert len(packed) < len(graph)
        ort.InferenceSession(graph, providers=["CPUExecutionProvider"])


def test_compressed_graphs_load_back_equal_and_what_does_not_shrink_stays_plain(
    tiny_model, tmp_path
):
    plain = export_onnx(tiny_model, tmp_path / "plain", ["int8"])
    model_dir = tmp_path / "site-model"
    shutil.copytree(plain, model_dir)
    (model_dir / "noise.onnx").write_bytes(os.urandom(100_000))  # gzip cannot shrink it
    description = json.loads((model_dir / DESCRIPTION_FILE).read_text())
    description["variants"]["int8"]["noise"] = "noise.onnx"
    (model_dir / DESCRIPTION_FILE).write_text(json.dumps(description))

    compress_graphs(model_dir)
    files = json.loads((model_dir / DESCRIPTION_FILE).read_text())["variants"]["int8"]
    assert files["noise"] == "noise.onnx"
    assert (model_dir / "noise.onnx").is_file() and not (model_dir / "noise.onnx.gz").exists()
    for graph in ("image", "step"):
        name = description["variants"]["int8"][graph]
        assert files[graph] == name + ".gz"
        assert not (model_dir / name).exists()  # the plain graph is dropped
        packed = (model_dir / files[graph]).read_bytes()
        assert gzip.decompress(packed) == (plain / name).read_bytes()
        assert len(packed) < (plain / name).stat().st_size
    kept = sorted(p.name for p in model_dir.iterdir())
    # Beside the graphs: the description, and the config and vocabulary of a whole model.
    assert kept == sorted([DESCRIPTION_FILE, "config.json", "tokenizer.json", *files.values()])


def files_and_bytes(directory: Path) -> dict[str, bytes]:
    return {
        p.relative_to(directory).as_posix(): p.read_bytes()
        for p in directory.rglob("*")
        if p.is_file()
    }


def test_a_site_from_an_exports_graphs_is_the_site_written_from_pytorch(
    tiny_model, tmp_path, page_dir
):
    exported = export_onnx(tiny_model, tmp_path / "onnx")  # fp32 too: the site keeps int8 only
    from_graphs = write_site_from_export(exported, tmp_path / "from-graphs", page_dir)
    from_pytorch = write_site(tiny_model, tmp_path / "from-pytorch", page_dir)
    assert files_and_bytes(from_graphs) == files_and_bytes(from_pytorch)
    assert "int8" in json.loads((exported / DESCRIPTION_FILE).read_text())["variants"]


@pytest.mark.parametrize(
    ("graph", "error"),
    [("../../elsewhere.onnx", "is not the name of a file beside it"), ("gone.onnx", "is missing")],
)
def test_an_export_whose_graphs_cannot_be_copied_is_refused_before_any_site(
    tiny_model, tmp_path, page_dir, graph, error
):
    exported = export_onnx(tiny_model, tmp_path / "onnx", ["int8"])
    (tmp_path / "elsewhere.onnx").write_bytes(b"not the model's")
    description = json.loads((exported / DESCRIPTION_FILE).read_text())
    description["variants"]["int8"]["step"] = graph
    (exported / DESCRIPTION_FILE).write_text(json.dumps(description))
    with pytest.raises(ValueError, match=error):
        write_site_from_export(exported, tmp_path / "site", page_dir)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dist", "elsewhere.onnx", "onnx"]


def test_an_unbuilt_page_is_refused_before_any_export(tiny_model, tmp_path):
    with pytest.raises(ValueError, match="run `make frontend`"):
        write_site(tiny_model, tmp_path / "site", tmp_path / "no-page")
    assert not (tmp_path / "site").exists()


def test_an_unrelated_folder_is_never_overwritten(tiny_model, tmp_path, page_dir):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(ValueError, match="not a site `--web` wrote"):
        write_site(tiny_model, folder, page_dir)
    assert (folder / "holiday.jpg").read_bytes() == b"precious"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_site_written_before_keeps_the_files_the_user_added(tiny_model, tmp_path, page_dir):
    target = tmp_path / "site"
    write_site(tiny_model, target, page_dir)
    (target / "CNAME").write_text("captions.example")  # D16: the user's, never removed
    (target / "blog").mkdir()
    (target / "blog" / "post.html").write_text("<p>hello</p>")
    (page_dir / "assets" / "index.js").rename(page_dir / "assets" / "index-2.js")  # a new build
    write_site(tiny_model, target, page_dir)
    assert (target / "CNAME").read_text() == "captions.example"
    assert (target / "blog" / "post.html").is_file()
    assert not (target / "assets" / "index.js").exists()  # the old build's own file is gone
    assert (target / "assets" / "index-2.js").is_file()
    assert {p.name for p in tmp_path.iterdir()} == {"dist", "site"}  # no scratch left behind
    # a file of the user's where the new site puts one is refused, before anything changes
    (page_dir / "favicon.ico").write_bytes(b"icon")
    (target / "favicon.ico").write_bytes(b"mine")
    with pytest.raises(ValueError, match="favicon.ico was not written by captioner"):
        write_site(tiny_model, target, page_dir)
    assert (target / "favicon.ico").read_bytes() == b"mine"
    assert (target / "assets" / "index-2.js").is_file()


def test_a_killed_exports_temporary_folder_is_removed_by_the_next(tiny_model, tmp_path, page_dir):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], text=True, capture_output=True
    ).stdout.strip()
    stale = tmp_path / ".site-export-abc123"
    (stale / "export").mkdir(parents=True)
    (stale / SCRATCH_MARKER).write_text(dead)
    unrelated = tmp_path / ".site-export-notes"  # no marker: not ours
    unrelated.mkdir()
    write_site(tiny_model, tmp_path / "site", page_dir)
    assert not stale.exists() and unrelated.is_dir()


def test_export_onnx_never_replaces_a_file_it_did_not_write(tiny_model, tmp_path, capsys):
    model_dir = tiny_model.save_pretrained(tmp_path / "model")
    folder = tmp_path / "graphs"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    export = ["export", str(model_dir), "--variants", "int8", "--onnx"]
    assert main([*export, str(folder)]) == 0
    assert (folder / "notes.txt").read_text() == "mine"  # D17: beside the export, untouched
    encoder = json.loads((folder / DESCRIPTION_FILE).read_text())["variants"]["int8"]["encoder"]
    graph = (folder / encoder).read_bytes()
    (folder / encoder).write_bytes(b"an export's own file, damaged")
    assert main([*export, str(folder)]) == 0  # an export replaces its own files
    assert (folder / encoder).read_bytes() == graph
    assert (folder / "notes.txt").read_text() == "mine"
    other = tmp_path / "other"
    other.mkdir()
    (other / encoder).write_text("a graph of mine")
    capsys.readouterr()
    assert main([*export, str(other)]) == 2
    assert "was not written by captioner" in capsys.readouterr().err
    assert (other / encoder).read_text() == "a graph of mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["graphs", "model", "other"]
    (tmp_path / "file").write_text("x")
    assert main([*export, str(tmp_path / "file")]) == 2  # D10
    error = capsys.readouterr().err.strip()
    assert error == f"captioner: export: --onnx {tmp_path / 'file'} is a file: give a folder"


def test_export_web_usage_errors_are_one_line(tiny_model, tmp_path, capsys):
    model_dir = tiny_model.save_pretrained(tmp_path / "model")
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"precious")
    assert main(["export", str(model_dir), "--web", str(folder)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("captioner: export: ") and "\n" not in error
    assert (folder / "holiday.jpg").read_bytes() == b"precious"


def test_a_tampered_manifest_never_reaches_outside_the_site(tiny_model, tmp_path, page_dir):
    target = tmp_path / "site"
    write_site(tiny_model, target, page_dir)
    (tmp_path / "outside.txt").write_text("keep me")
    manifest = target / EXPORT_MANIFEST
    files = json.loads(manifest.read_text())["files"]
    manifest.write_text(json.dumps({"files": [*files, "../outside.txt", str(tmp_path)]}))
    write_site(tiny_model, target, page_dir)
    assert (tmp_path / "outside.txt").read_text() == "keep me"


def test_the_site_tells_the_page_it_is_static_with_the_model_beside_it(site):
    assert json.loads((site / PAGE_FILE).read_text()) == page_description(
        server=False, device_model=True
    )
    assert (site / DEVICE_MODEL_FILE).is_file()
    assert f"{MODEL_DIR}/{DESCRIPTION_FILE}" == DEVICE_MODEL_FILE


@pytest.mark.parametrize("caption, sentence", json.loads(SENTENCE_CASES.read_text())["cases"])
def test_sentence_case_writes_captions_as_the_page_shows_them(caption, sentence):
    assert CollectionConfig(sentence_case=True).finish_text(caption) == sentence
