import json
import subprocess
import sys

import pytest
from PIL import Image
from safetensors.torch import load_file

from captioner.cli import COMMANDS, build_parser, main
from captioner.collection import CollectionConfig
from captioner.config import CaptionerConfig, EncoderConfig, GenerationConfig
from captioner.hub import BUNDLED_DIR
from captioner.model_card import MARKER, model_card


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
    code = main(["caption", *paths, "--model", str(model_dir), "--json", "--num-beams", "2"])
    assert code == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    by_image = {line["image"]: line for line in lines}
    assert len(lines) == len(by_image) == 4  # good.png, given twice, is captioned once
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


def test_attention_dir_mirrors_folders_so_same_names_do_not_collide(model_dir, photo, tmp_path):
    photo.save(tmp_path / "x.png")  # tmp/x.png beside tmp/a/x.png: three images named x
    for folder, colour in (("a", (255, 0, 0)), ("b", (0, 0, 255))):
        (tmp_path / folder).mkdir()
        Image.new("RGB", (64, 48), colour).save(tmp_path / folder / "x.png")
    images = [str(tmp_path / f) for f in ("a/x.png", "b/x.png", "x.png")]
    maps = tmp_path / "maps"
    code = main(["caption", *images, "--model", str(model_dir), "--attention-dir", str(maps)])
    assert code == 0
    folders = sorted(str(p.relative_to(maps)) for p in maps.rglob("*") if p.is_dir())
    assert folders == ["a", "a/x", "b", "b/x", "x"]
    first = sorted((maps / "a" / "x").glob("*.png"))
    second = sorted((maps / "b" / "x").glob("*.png"))
    assert first and second
    assert first[0].read_bytes() != second[0].read_bytes()  # neither overwrote the other


def test_folder_to_csv_then_resume_and_sidecars(model_dir, photo, tmp_path, capsys):
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    photo.save(photos / "a.jpg")
    photo.rotate(90).save(photos / "sub" / "b.png")
    (photos / "readme.md").write_text("# my photos")
    output = tmp_path / "captions.csv"
    args = ["caption", str(photos), "-r", "--model", str(model_dir), "-o", str(output)]
    assert main([*args, "--num-beams", "1", "--sentence-case"]) == 0
    err = capsys.readouterr().err
    assert "captioned 2 of 3" in err and "skipped 1 file that is not an image" in err
    text = output.read_text().splitlines()
    assert text[0].startswith("image,caption,") and len(text) == 3
    assert [line.split(",")[0] for line in text[1:]] == ['"a.jpg"', '"sub/b.png"']  # quoted
    assert main(args) == 0  # nothing left to do
    assert "2 already done" in capsys.readouterr().err
    assert len(output.read_text().splitlines()) == 3

    assert main(["caption", str(photos), "-r", "--model", str(model_dir), "--sidecar", ".txt"]) == 0
    assert (photos / "a.txt").read_text().strip() and (photos / "sub" / "b.txt").is_file()


def test_from_list_and_plain_output(model_dir, photo, tmp_path, capsys, monkeypatch):
    photo.save(tmp_path / "a.png")
    photo.rotate(180).save(tmp_path / "b.png")
    (tmp_path / "list.txt").write_text("# to caption\na.png\n\nb.png\n")
    monkeypatch.chdir(tmp_path)
    code = main(["caption", "--from-list", "list.txt", "--model", str(model_dir), "-q"])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == ["a.png", "b.png"]
    assert all(line.split("\t")[1] for line in lines)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--batch-size", "0"], "batch_size must be an integer from 1 to 512, got 0"),
        (["--batch-size", "-1"], "batch_size must be an integer from 1 to 512, got -1"),
        (["--batch-size", "x"], "argument --batch-size: invalid int value: 'x'"),
        (["--num-beams", "0"], "num_beams must be an integer from 1 to 16, got 0"),
        (["--num-beams", "-1"], "num_beams must be an integer from 1 to 16, got -1"),
        (["--num-beams", "99"], "num_beams must be an integer from 1 to 16, got 99"),
        (["--max-new-tokens", "0"], "max_new_tokens must be an integer from 1"),
        (["--max-new-tokens", "-5"], "max_new_tokens must be an integer from 1"),
        (["--max-new-tokens", "500"], "max_new_tokens must be an integer from 1 to 39"),
        (
            ["--min-new-tokens", "9", "--max-new-tokens", "5"],
            "min_new_tokens must be an integer from 1 to 5",
        ),
        (
            ["--num-return-sequences", "4", "--num-beams", "3"],
            "num_return_sequences must be an integer from 1 to 3",
        ),
        (["--do-sample", "--temperature", "0"], "temperature must be a number >= 0.01"),
        (["--do-sample", "--top-p", "0"], "top_p must be a number > 0.0"),
        (["--workers", "-1"], "num_workers must be an integer from 0 to 64, got -1"),
        (["--sidecar", "txt"], "sidecar must be a file suffix such as .txt"),
        (["--sidecar", "../x"], "sidecar must be a file suffix such as .txt"),
        (["-o", "out.txt"], "an output file must end in .jsonl or .csv"),
        (["--prefix", "a\nb"], "prefix must be one line of text"),
        (["--split", "dev"], "--split needs --data"),
        (["-o", "x.jsonl", "--json"], "--json is for standard output"),
        (["--devices", "2"], "need --output or --sidecar"),
        (["-o", "x.jsonl", "--devices", "0"], "devices must be an integer >= 1, got 0"),
        (["-o", "x.jsonl", "--num-nodes", "0"], "num_nodes must be an integer >= 1, got 0"),
        (["-o", "x.jsonl", "--strategy", "nonsense"], "nonsense"),
    ],
)
def test_caption_options_are_checked_in_one_line(
    model_dir, photo, tmp_path, capsys, flags, message
):
    photo.save(tmp_path / "a.png")
    args = ["caption", str(tmp_path / "a.png"), "--model", str(model_dir), *flags]
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)
        try:
            code = main(args)
        except SystemExit as exit:  # argparse's own type errors
            code = exit.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err and not (tmp_path / "x.jsonl").exists()


def test_nothing_to_caption_is_a_usage_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["caption", str(tmp_path / "empty")]) == 2
    assert "nothing to caption" in capsys.readouterr().err


def test_help_lists_every_command_and_caption_flags_with_library_defaults(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    top = capsys.readouterr().out
    commands = next(a for a in build_parser()._actions if a.dest == "command")
    assert len(commands.choices) == len(COMMANDS)
    listed = {choice.dest: choice.help for choice in commands._choices_actions}
    assert set(listed) == set(commands.choices) and all(listed.values())
    for name, summary in listed.items():
        assert f"{name}  " in top and summary in " ".join(top.split())
    caption = commands.choices["caption"]
    for action in caption._actions:
        assert action.help, f"{action.option_strings} has no help"
        assert action.default is None or action.dest in ("help", "json", "quiet")
    text = " ".join(caption.format_help().split())
    assert f"(default: {CollectionConfig.batch_size})" in text
    assert f"{GenerationConfig.num_beams} unless its config says" in text


OLD_FLAGS = [
    ("--beam", "--num-beams", "4", "num_beams", 4),
    ("--max-tokens", "--max-new-tokens", "7", "max_new_tokens", 7),
    ("--min-tokens", "--min-new-tokens", "2", "min_new_tokens", 2),
    ("--num-captions", "--num-return-sequences", "3", "num_return_sequences", 3),
]


@pytest.mark.parametrize(
    ("command", "old", "new", "text", "field", "value"),
    [("caption", *flags) for flags in OLD_FLAGS] + [("eval", *OLD_FLAGS[0])],
)
def test_an_old_flag_still_works_and_names_its_new_one(
    command, old, new, text, field, value, capsys
):
    args = build_parser().parse_args([command, "--data", "d", old, text])
    assert getattr(args, field) == value
    assert capsys.readouterr().err == f"captioner {command}: {old} is now {new}\n"
    assert getattr(build_parser().parse_args([command, "--data", "d", new, text]), field) == value
    assert capsys.readouterr().err == ""


def test_the_old_sample_switch_is_do_sample(capsys):
    assert build_parser().parse_args(["caption", "--sample"]).do_sample is True
    assert capsys.readouterr().err == "captioner caption: --sample is now --do-sample\n"
    assert build_parser().parse_args(["caption"]).do_sample is None  # the model decides


def test_old_flags_caption_as_their_new_names_do(model_dir, photo, tmp_path, capsys):
    photo.save(tmp_path / "a.png")
    base = ["caption", str(tmp_path / "a.png"), "--model", str(model_dir), "--json"]
    old = ["--beam", "3", "--max-tokens", "6", "--min-tokens", "2", "--num-captions", "2"]
    new = ["--num-beams", "3", "--max-new-tokens", "6", "--min-new-tokens", "2"]
    assert main([*base, *old]) == 0
    by_old = capsys.readouterr().out
    assert main([*base, *new, "--num-return-sequences", "2"]) == 0
    assert capsys.readouterr().out == by_old and len(json.loads(by_old)["captions"]) == 2


@pytest.mark.parametrize("command", ["caption", "eval"])
def test_help_names_decoding_flags_as_hugging_face_does(command, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--num-beams N beams, 1 = greedy" in text and "(old name: --beam)" in text
    assert "[--beam" not in text and "--beam N" not in text  # listed only as an old name


def test_python_dash_m_captioner_runs_the_command_line():
    done = subprocess.run(
        [sys.executable, "-m", "captioner", "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and "caption" in done.stdout and "export" in done.stdout


def test_saved_models_carry_a_hub_model_card_and_keep_the_users_own(model_dir, tmp_path):
    assert main(["export", str(model_dir), str(tmp_path / "mine")]) == 0
    card = (tmp_path / "mine" / "README.md").read_text()
    header = card.split("---\n")[1]
    for line in (
        'library_name: "captioner"',
        'pipeline_tag: "image-to-text"',
        'license: "apache-2.0"',
        'datasets:\n- "none (test model)"',  # from the model's metadata
        'metrics:\n- "cider"',
    ):
        assert line in header
    assert 'Captioner.from_pretrained("mine")' in card and "--model mine" in card
    (tmp_path / "mine" / "README.md").write_text("# my own card\n")
    assert main(["export", str(model_dir), str(tmp_path / "mine")]) == 0
    assert (tmp_path / "mine" / "README.md").read_text() == "# my own card\n"


def test_the_bundled_model_card_is_the_one_save_pretrained_writes():
    card = (BUNDLED_DIR / "README.md").read_text()
    config = CaptionerConfig.load(BUNDLED_DIR / "config.json")
    assert card == model_card(config, "flickr8k-effnet", None)
    assert "Captioner.from_pretrained()" in card and card.rstrip().endswith(MARKER)


@pytest.mark.parametrize(
    ("blocks", "encoder_words"),
    [
        (0, "the frozen `efficientnet-lite2` image encoder and"),
        (1, "the `efficientnet-lite2` image encoder (frozen but for its last block and head "),
        (2, "encoder (frozen but for its last 2 blocks and head convolution, which were trained "),
    ],
)
def test_the_model_card_says_which_encoder_blocks_were_trained(blocks, encoder_words):
    encoder = EncoderConfig(name="efficientnet-lite2", trained_blocks=blocks)
    card = model_card(CaptionerConfig(encoder=encoder), "mine", "mine")
    assert encoder_words in " ".join(card.split())


def test_export_never_resaves_over_a_users_config(model_dir, tmp_path, capsys):
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "config.json").write_text('{"my": "settings"}')
    assert main(["export", str(model_dir), str(folder)]) == 2
    assert "config.json exists and is not part of a saved captioner model" in (
        capsys.readouterr().err
    )
    assert (folder / "config.json").read_text() == '{"my": "settings"}'
    assert main(["export", str(model_dir), str(tmp_path / "copy")]) == 0
    assert main(["export", str(model_dir), str(tmp_path / "copy"), "--half"]) == 0  # its own


def test_eval_never_writes_over_a_users_file_by_default(model_dir, tmp_path, monkeypatch, capsys):
    from training_data import make_colour_dataset

    dataset = make_colour_dataset(tmp_path / "colours")
    monkeypatch.chdir(tmp_path)
    arguments = ["eval", "--model", str(model_dir), "--data", str(dataset), "--json"]
    arguments += ["--cache-dir", str(tmp_path / "cache")]
    default = tmp_path / "predictions-dev.jsonl"
    default.write_text("my notes\n")
    assert main(arguments) == 2
    err = capsys.readouterr().err
    assert "predictions-dev.jsonl exists and was not written by captioner eval" in err
    assert len(err.strip().splitlines()) == 1 and default.read_text() == "my notes\n"
    assert main([*arguments, "--predictions", str(default)]) == 0  # named: the user's say-so
    first = default.read_text()
    assert json.loads(first.splitlines()[0])["caption"]
    assert main(arguments) == 0  # an earlier eval's file is replaced
    assert default.read_text() == first
    capsys.readouterr()
    for path, words in ((tmp_path, "is a folder"), (tmp_path / "no" / "p.jsonl", "does not exist")):
        assert main([*arguments, "--predictions", str(path)]) == 2
        assert words in capsys.readouterr().err


def test_eval_decodes_with_the_beam_search_flags_given(model_dir, tmp_path, capsys):
    from training_data import make_colour_dataset

    from captioner import Captioner

    dataset = make_colour_dataset(tmp_path / "colours")
    arguments = ["eval", "--model", str(model_dir), "--data", str(dataset), "--json"]
    arguments += ["--cache-dir", str(tmp_path / "cache")]
    flags = ["--num-beams", "3", "--no-repeat-ngram-size", "1", "--length-penalty", "0.5"]
    predictions = {}
    for name, extra in (("own", []), ("flags", flags)):
        path = tmp_path / f"{name}.jsonl"
        assert main([*arguments, *extra, "--predictions", str(path)]) == 0
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        predictions[name] = {line["image_id"]: line["caption"] for line in lines}
    model = Captioner.from_pretrained(model_dir, runtime="torch")
    ids = sorted(predictions["flags"])
    images = [dataset / "images" / f"{image_id}.png" for image_id in ids]
    options = {"num_beams": 3, "no_repeat_ngram_size": 1, "length_penalty": 0.5}
    assert [predictions["flags"][i] for i in ids] == [
        c.text for c in model.caption(images, **options)
    ]
    assert predictions["flags"] != predictions["own"]  # the flags did change the decoding
    capsys.readouterr()
    assert main([*arguments, "--no-repeat-ngram-size", "-1"]) == 2
    assert "no_repeat_ngram_size" in capsys.readouterr().err
