"""Every dataset format from small files written here, and the real Flickr8k slice."""

from __future__ import annotations

import io
import json
import logging
from collections import Counter
from pathlib import Path

import pytest
from conftest import FLICKR8K, require_flickr8k
from PIL import Image

from captioner.data import CaptionRecord, SplitConfig, hash_split, load_records, same_split


def png(colour: tuple[int, int, int], size: tuple[int, int] = (4, 3)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def write_jpeg(path: Path, colour: tuple[int, int, int] = (200, 30, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path, format="JPEG")


def by_id(records: list[CaptionRecord]) -> dict[str, CaptionRecord]:
    return {record.image_id: record for record in records}


# ---------------------------------------------------------------- captions.jsonl folder


def test_jsonl_folder(tmp_path, caplog):
    for name in ("a", "b", "c", "empty", "blank"):
        write_jpeg(tmp_path / "images" / f"{name}.jpg")
    rows = [
        {"image": "images/a.jpg", "image_id": "a", "split": "train", "captions": [" A dog . "]},
        {"image": "images/b.jpg", "image_id": "b", "split": "dev", "captions": ["x", "", "  y"]},
        {"image": "images/c.jpg", "split": "test", "captions": ["c1"]},  # id from the file name
        {"image": "images/empty.jpg", "image_id": "empty", "split": "train", "captions": []},
        {"image": "images/blank.jpg", "image_id": "blank", "split": "train", "captions": [" "]},
        {"image": "images/gone.jpg", "image_id": "gone", "split": "train", "captions": ["z"]},
        {"image_id": "no-image", "split": "train", "captions": ["z"]},  # bad: no image
        {"image": "images/a.jpg", "captions": "not a list"},  # bad
    ]
    lines = [json.dumps(row) for row in rows] + ["{not json", "[1, 2]", ""]
    (tmp_path / "captions.jsonl").write_text("\n".join(lines) + "\n")

    with caplog.at_level(logging.WARNING, logger="captioner.data.formats"):
        records = load_records(tmp_path)
    assert by_id(records) == {
        "a": CaptionRecord("a", tmp_path / "images/a.jpg", ["A dog ."], "train"),
        "b": CaptionRecord("b", tmp_path / "images/b.jpg", ["x", "y"], "dev"),
        "c": CaptionRecord("c", tmp_path / "images/c.jpg", ["c1"], "test"),
    }
    # 4 bad rows (no image, captions not a list, broken JSON, not an object), 1 missing image,
    # 2 empty caption strings (b's "" and blank's " "), 2 images left without any caption.
    message = caplog.text
    assert "3 records" in message
    assert "4 bad rows" in message
    assert "1 image files missing" in message
    assert "2 empty captions dropped" in message
    assert "2 images without captions dropped" in message
    # The file itself works as a source too; dev and val are one split.
    assert [r.image_id for r in load_records(tmp_path / "captions.jsonl", "val")] == ["b"]
    assert [r.image_id for r in load_records(tmp_path, "dev")] == ["b"]


# ---------------------------------------------------------------- Karpathy split files


def karpathy_entry(filename: str, split: str, raws: list[str], **extra) -> dict:
    sentences = [{"raw": raw, "tokens": raw.lower().split()} for raw in raws]
    return {"filename": filename, "split": split, "sentences": sentences, **extra}


def test_karpathy_flickr(tmp_path):
    write_jpeg(tmp_path / "images" / "1000.jpg")
    write_jpeg(tmp_path / "images" / "2000.jpg")
    images = [
        karpathy_entry("1000.jpg", "train", ["A dog runs .", "A dog "], imgid=0),
        karpathy_entry("2000.jpg", "val", ["Two cats ."], imgid=1),
        {"filename": "3000.jpg", "split": "test"},  # bad: no sentences
    ]
    # Sentences without "raw" fall back to their tokens.
    images[1]["sentences"].append({"tokens": ["two", "kittens"]})
    path = tmp_path / "dataset_flickr30k.json"
    path.write_text(json.dumps({"images": images, "dataset": "flickr30k"}))

    records = by_id(load_records(tmp_path))  # the folder holding one dataset_*.json
    assert records == {
        "1000": CaptionRecord("1000", tmp_path / "images/1000.jpg", ["A dog runs .", "A dog"], "train"),
        "2000": CaptionRecord("2000", tmp_path / "images/2000.jpg", ["Two cats .", "two kittens"], "val"),
    }  # fmt: skip
    assert [r.image_id for r in load_records(path, "dev")] == ["2000"]


def test_karpathy_coco_uses_filepath_and_cocoid(tmp_path):
    write_jpeg(tmp_path / "val2014" / "COCO_val2014_000000000042.jpg")
    write_jpeg(tmp_path / "train2014" / "COCO_train2014_000000000007.jpg")
    images = [
        karpathy_entry(
            "COCO_val2014_000000000042.jpg", "restval", ["A bus."], filepath="val2014", cocoid=42
        ),
        karpathy_entry(
            "COCO_train2014_000000000007.jpg", "train", ["A cat."], filepath="train2014", cocoid=7
        ),
    ]
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"images": images, "dataset": "coco"}))

    records = by_id(load_records(path))
    assert records["42"].image == tmp_path / "val2014" / "COCO_val2014_000000000042.jpg"
    assert records["42"].split == "restval"
    assert records["7"].image == tmp_path / "train2014" / "COCO_train2014_000000000007.jpg"
    assert [r.image_id for r in load_records(path, "restval")] == ["42"]


def test_missing_image_folder_is_an_error_not_an_empty_list(tmp_path):
    path = tmp_path / "dataset_flickr8k.json"
    path.write_text(json.dumps({"images": [karpathy_entry("1.jpg", "train", ["x"])]}))
    with pytest.raises(FileNotFoundError, match="image_root"):
        load_records(path)
    write_jpeg(tmp_path / "elsewhere" / "1.jpg")
    assert len(load_records(path, image_root=tmp_path / "elsewhere")) == 1


# ---------------------------------------------------------------- Kaggle Flickr8k / Flickr30k


def write_kaggle_flickr8k(folder: Path) -> Path:
    for name in ("111_aa.jpg", "222_bb.jpg", "333_cc.jpg"):
        write_jpeg(folder / "Images" / name)
    path = folder / "captions.txt"
    path.write_text(
        "image,caption\n"
        "111_aa.jpg,A child in a pink dress .\n"
        '111_aa.jpg,"A girl, in pink, climbing ."\n'  # quoted caption with commas
        "111_aa.jpg,A girl , unquoted , with commas .\n"  # unquoted commas: rejoined
        "222_bb.jpg,A black dog .\n"
        "222_bb.jpg,   \n"  # an empty caption
        "no-comma-here\n"  # a bad row
        "333_cc.jpg,A man .\n"
    )
    return path


def test_kaggle_flickr8k_with_hash_split(tmp_path, caplog):
    path = write_kaggle_flickr8k(tmp_path)
    with caplog.at_level(logging.WARNING, logger="captioner.data.formats"):
        records = by_id(load_records(tmp_path))
    assert records["111_aa"].captions == [
        "A child in a pink dress .",
        "A girl, in pink, climbing .",
        "A girl , unquoted , with commas .",
    ]
    assert records["111_aa"].image == tmp_path / "Images" / "111_aa.jpg"
    assert records["222_bb"].captions == ["A black dog ."]
    assert "1 bad rows" in caplog.text and "1 empty captions dropped" in caplog.text
    # No Karpathy file beside it: each image's split is fixed by its id alone.
    for record in records.values():
        assert record.split == hash_split(record.image_id)
    assert load_records(path) == list(records.values())  # the file works as a source too


def test_kaggle_flickr8k_with_a_karpathy_file(tmp_path, caplog):
    write_kaggle_flickr8k(tmp_path)
    karpathy = {
        "images": [
            karpathy_entry("111_aa.jpg", "train", ["ignored"]),
            karpathy_entry("222_bb.jpg", "test", ["ignored"]),
        ]
    }  # 333_cc.jpg is not in it, like Flickr8k's 91 photos outside the official splits
    (tmp_path / "dataset_flickr8k.json").write_text(json.dumps(karpathy))
    kaggle = tmp_path / "captions.txt"

    with caplog.at_level(logging.WARNING, logger="captioner.data.formats"):
        records = by_id(load_records(kaggle))  # the split file beside it is found
    assert {key: r.split for key, r in records.items()} == {"111_aa": "train", "222_bb": "test"}
    assert "1 images not in the split file dropped" in caplog.text
    assert records["111_aa"].captions[0] == "A child in a pink dress ."  # captions from Kaggle

    # An explicit split file wins over the one beside.
    other = tmp_path / "splits" / "mine.json"
    other.parent.mkdir()
    other.write_text(json.dumps({"images": [karpathy_entry("333_cc.jpg", "val", ["x"])]}))
    assert [r.image_id for r in load_records(kaggle, "dev", karpathy=other)] == ["333_cc"]


def test_kaggle_flickr30k_results_csv(tmp_path, caplog):
    for name in ("1000092795.jpg", "10002456.jpg"):
        write_jpeg(tmp_path / "flickr30k_images" / name)
    path = tmp_path / "results.csv"
    path.write_text(
        "image_name| comment_number| comment\n"
        "1000092795.jpg| 0| Two young guys with shaggy hair look at their hands .\n"
        "1000092795.jpg| 1| Two young , White males are outside near many bushes .\n"
        "10002456.jpg| 0| Several men in hard hats are operating a pulley system .\n"
        "10002456.jpg| 4 A dog runs across the grass .\n"  # the real file's broken row
        "10002456.jpg| 1| Workers look down from up above on a piece of equipment .\n"
    )
    with caplog.at_level(logging.WARNING, logger="captioner.data.formats"):
        records = by_id(load_records(path))
    assert records["1000092795"].captions == [
        "Two young guys with shaggy hair look at their hands .",
        "Two young , White males are outside near many bushes .",
    ]
    assert records["10002456"].image == tmp_path / "flickr30k_images" / "10002456.jpg"
    assert len(records["10002456"].captions) == 2
    assert "1 bad rows" in caplog.text
    assert all(r.split == hash_split(r.image_id) for r in records.values())


# ---------------------------------------------------------------- Hugging Face tables and hub


def hub_table(rows: list[dict]):
    """A table shaped like nlphuji/flickr_30k_test: image, caption list, split, filename, img_id."""
    import datasets

    features = datasets.Features(
        {
            "image": datasets.Image(),
            "caption": datasets.Sequence(datasets.Value("string")),
            "split": datasets.Value("string"),
            "filename": datasets.Value("string"),
            "img_id": datasets.Value("string"),
        }
    )
    columns = {key: [row[key] for row in rows] for key in features}
    columns["image"] = [{"bytes": row["image"], "path": None} for row in rows]
    return datasets.Dataset.from_dict(columns, features=features)


HUB_ROWS = [
    {"image": png((255, 0, 0)), "caption": [" A red square . ", "red"], "split": "train",
     "filename": "1000092795.jpg", "img_id": "0"},
    {"image": png((0, 0, 255), (2, 5)), "caption": ["A blue one ."], "split": "val",
     "filename": "10002456.jpg", "img_id": "1"},
    {"image": png((0, 255, 0)), "caption": ["", " "], "split": "test",
     "filename": "1001.jpg", "img_id": "2"},  # no usable caption: dropped
]  # fmt: skip


def check_hub_records(records: list[CaptionRecord]) -> None:
    records = by_id(records)
    assert set(records) == {"1000092795", "10002456"}  # ids from file names, as in other formats
    red = records["1000092795"]
    assert (red.captions, red.split) == (["A red square .", "red"], "train")
    assert isinstance(red.image, bytes)
    with Image.open(io.BytesIO(records["10002456"].image)) as image:
        assert image.size == (2, 5)
        assert image.convert("RGB").getpixel((1, 1)) == (0, 0, 255)


def test_parquet_file(tmp_path, caplog):
    path = tmp_path / "flickr30k.parquet"
    hub_table(HUB_ROWS).to_parquet(str(path))
    with caplog.at_level(logging.WARNING, logger="captioner.data.formats"):
        check_hub_records(load_records(path))
    assert "1 images without captions dropped" in caplog.text
    assert [r.image_id for r in load_records(path, "dev")] == ["10002456"]


def test_arrow_file(tmp_path):
    hub_table(HUB_ROWS).save_to_disk(str(tmp_path / "saved"))
    (arrow,) = (tmp_path / "saved").glob("*.arrow")
    check_hub_records(load_records(arrow))


def test_plain_parquet_without_split_or_names(tmp_path):
    # Raw image bytes, a single caption string, no split and no file name: the id comes from
    # the image content and the split from hash_split.
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"image": [png((1, 2, 3)), b"\x00broken"], "caption": ["A pixel .", None]})
    pq.write_table(table, tmp_path / "plain.parquet")
    (record,) = load_records(tmp_path / "plain.parquet")
    assert record.captions == ["A pixel ."]
    assert record.image == png((1, 2, 3))
    assert len(record.image_id) == 16
    assert record.split == hash_split(record.image_id)


def test_hub_dataset(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(name, split=None):
        calls.append((name, split))
        table = hub_table(HUB_ROWS)
        return table if split else datasets.DatasetDict({"test": table})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    check_hub_records(load_records("hf:nlphuji/flickr_30k_test"))
    # The rows' own split column wins over the hub split ("test" holds all of Karpathy's).
    assert [r.image_id for r in load_records("hf:nlphuji/flickr_30k_test:test", "val")] == [
        "10002456"
    ]
    assert calls == [("nlphuji/flickr_30k_test", None), ("nlphuji/flickr_30k_test", "test")]


# ---------------------------------------------------------------- detection and splits


def test_unknown_sources_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_records(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="captions.jsonl"):
        load_records(tmp_path)  # an empty folder
    (tmp_path / "data.xml").write_text("<x/>")
    with pytest.raises(ValueError, match="not a dataset format"):
        load_records(tmp_path / "data.xml")


def test_hash_split_is_deterministic_and_proportioned():
    ids = [f"{n:05d}_photo" for n in range(10_000)]
    first = [hash_split(image_id) for image_id in ids]
    assert first == [hash_split(image_id) for image_id in ids]
    counts = Counter(first)
    assert 400 < counts["val"] < 600 and 400 < counts["test"] < 600  # 5% each
    assert hash_split("x", val=0.0, test=0.0) == "train"
    assert same_split("dev", "val") and same_split("validation", "dev")
    assert not same_split("train", "restval")


# ---------------------------------------------------------------- the real Flickr8k slice


def test_real_flickr8k():
    require_flickr8k()
    train = load_records(FLICKR8K, "train")
    dev = load_records(FLICKR8K, "dev")
    assert (len(train), len(dev)) == (6000, 1000)
    assert load_records(FLICKR8K, "val") == dev
    assert all(len(record.captions) == 5 for record in train + dev)
    assert len({record.image_id for record in train + dev}) == 7000
    assert all(isinstance(record.image, Path) for record in dev)
    assert dev[0].image.is_file() and dev[0].image.name == f"{dev[0].image_id}.jpg"


# ---------------------------------------------------------------- splits made here


def test_a_split_made_here_is_logged_in_one_line_and_follows_its_settings(tmp_path, caplog):
    write_kaggle_flickr8k(tmp_path)
    with caplog.at_level(logging.WARNING, logger="captioner.data.splits"):
        records = load_records(tmp_path)
    (line,) = [r.getMessage() for r in caplog.records if r.name == "captioner.data.splits"]
    counts = Counter(record.split for record in records)
    assert f"{counts['train']} photos went to train, {counts['val']} to dev" in line
    assert "--set data_split.dev_fraction=F" in line and "seed 0" in line

    everything_dev = SplitConfig(dev_fraction=0.99, test_fraction=0.0)
    assert {r.split for r in load_records(tmp_path, splits=everything_dev)} == {"val"}
    ids = [f"{n:05d}_photo" for n in range(2000)]
    reseeded = [SplitConfig(seed=7).split_of(image_id) for image_id in ids]
    assert reseeded != [hash_split(image_id) for image_id in ids]  # another draw
    assert 50 < Counter(reseeded)["val"] < 150  # of the same share


def test_split_settings_are_checked_and_read_back_from_a_model():
    with pytest.raises(ValueError, match="data_split.dev_fraction must be a number"):
        SplitConfig(dev_fraction=-0.1).validate()
    with pytest.raises(ValueError, match="must leave some photos to train"):
        SplitConfig(dev_fraction=0.5, test_fraction=0.5).validate()
    saved = {"data_split": {"dev_fraction": 0.2, "test_fraction": 0.1, "seed": 3}}
    assert SplitConfig.from_metadata(saved) == SplitConfig(0.2, 0.1, 3)
    assert SplitConfig.from_metadata({}) == SplitConfig()  # a model trained before
    with pytest.raises(ValueError, match="the model's data_split"):
        SplitConfig.from_metadata({"data_split": {"share": 0.2}})
