import json

import pytest
from safetensors.torch import load_file

from captioner.cli import main


@pytest.fixture(scope="module")
def model_dir(tiny_model, tmp_path_factory):
    return tiny_model.save_pretrained(tmp_path_factory.mktemp("model"))


def test_caption_json_reports_each_file_and_fails_on_bad_ones(model_dir, photo, tmp_path, capsys):
    good = tmp_path / "good.png"
    photo.save(good)
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("hello")
    truncated = tmp_path / "cut.jpg"
    photo.save(tmp_path / "full.jpg")
    truncated.write_bytes((tmp_path / "full.jpg").read_bytes()[:300])
    paths = [str(good), str(tmp_path / "missing.jpg"), str(not_image), str(truncated), str(good)]
    code = main(["caption", *paths, "--model", str(model_dir), "--json", "--beam", "2"])
    assert code == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    by_image = {}
    for line in lines:
        by_image.setdefault(line["image"], line)
    assert len(lines) == 5
    assert by_image[str(good)]["caption"] and by_image[str(good)]["tokens"]
    assert "no such file" in by_image[str(tmp_path / "missing.jpg")]["error"]
    assert "not an image" in by_image[str(not_image)]["error"]
    assert "truncated" in by_image[str(truncated)]["error"]


def test_caption_attention_dir_has_one_heatmap_per_token(model_dir, photo, tmp_path, capsys):
    image = tmp_path / "dog.png"
    photo.save(image)
    args = [
        "caption",
        str(image),
        "--model",
        str(model_dir),
        "--attention-dir",
        str(tmp_path / "maps"),
    ]
    assert main([*args, "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    maps = sorted((tmp_path / "maps" / "dog").glob("*.png"))
    assert record["attention_dir"] == str(tmp_path / "maps" / "dog")
    assert len(maps) == len(record["tokens"]) > 0
    assert main(args) == 0  # plain output: just the caption
    assert capsys.readouterr().out.strip() == record["caption"]


def test_missing_model_is_a_message_not_a_trace(tmp_path, photo, capsys):
    image = tmp_path / "a.png"
    photo.save(image)
    assert main(["caption", str(image), "--model", str(tmp_path / "no" / "model")]) == 2
    assert "not a model folder" in capsys.readouterr().err


def test_export_half_precision(model_dir, tmp_path, capsys):
    assert main(["export", str(model_dir), str(tmp_path / "half"), "--half"]) == 0
    assert "MB" in capsys.readouterr().out
    weights = load_file(tmp_path / "half" / "model.safetensors")
    assert {str(t.dtype) for t in weights.values()} == {"torch.float16"}
