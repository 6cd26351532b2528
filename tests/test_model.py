import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from captioner import Captioner, ImageLoadError
from captioner.attention import colourise, overlay, save_token_heatmaps, select_map
from captioner.hub import BUNDLED_MODELS, ModelLoadError, ModelNotFoundError, resolve_model_dir
from captioner.torch_model import CaptionModel


def test_caption_accepts_every_input_kind_and_batches(tiny_model, photo, tmp_path):
    path = tmp_path / "photo.png"
    photo.save(path)
    single = tiny_model.caption(photo, num_beams=1)
    assert len(single) == 1 and single[0].text and single[0].tokens
    many = tiny_model.caption([path, str(path), path.read_bytes(), np.asarray(photo)], num_beams=1)
    # Batched images give what each gives alone.
    assert len({c.text for c in many}) == 1
    assert many[0].text == tiny_model.caption(path, num_beams=1)[0].text


def test_caption_tokens_match_text(tiny_model, photo):
    result = tiny_model.caption(photo, num_beams=3)[0]
    assert len(result.tokens) == len(result.token_ids)
    assert tiny_model.tokenizer.decode(result.token_ids) == result.text


def test_attention_maps_shape_and_meaning(tiny_model, photo):
    result = tiny_model.caption(photo, num_beams=3, return_attention=True)[0]
    config = tiny_model.config.decoder
    assert result.attention.shape == (len(result.tokens), config.n_layers, config.n_heads, 7, 7)
    np.testing.assert_allclose(result.attention.sum(axis=(3, 4)), 1.0, rtol=1e-5)
    assert result.mean_attention.shape == (len(result.tokens), 7, 7)
    # Row t of the attention is what the decoder saw while predicting token t: recompute it.
    with torch.inference_mode():
        pixels = torch.from_numpy(tiny_model.captioner().pixels([photo]))
        memory = tiny_model.decoder.encode_image(tiny_model.encoder(pixels).tokens)
        ids = torch.tensor([[tiny_model.tokenizer.start_id, *result.token_ids]])
        weights = tiny_model.decoder(ids, memory, need_weights=True).cross_attention[0]
    last = len(result.token_ids) - 1
    np.testing.assert_allclose(
        result.attention[last],
        weights[:, :, last].reshape(config.n_layers, config.n_heads, 7, 7),
        atol=1e-6,
    )
    assert tiny_model.caption(photo)[0].attention is None


def test_save_and_load_round_trip(tiny_model, photo, tmp_path):
    directory = tiny_model.save_pretrained(tmp_path / "model")
    assert sorted(p.name for p in directory.iterdir()) == [
        "README.md",  # the model card
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    ]
    config = json.loads((directory / "config.json").read_text())
    assert config["encoder"]["name"] == "efficientnet-lite0"
    with safe_open(directory / "model.safetensors", "pt") as weights:
        names = list(weights.keys())
    assert names and not any(name.startswith("encoder") or "_blocks" in name for name in names)
    loaded = CaptionModel.from_pretrained(directory)
    for beam in (1, 3):
        assert (
            loaded.caption(photo, num_beams=beam)[0].text
            == tiny_model.caption(photo, num_beams=beam)[0].text
        )
    # Without graphs in the folder, Captioner exports them into the cache: the float32 graphs
    # write PyTorch's captions.
    exported = Captioner.from_pretrained(directory, runtime="onnx-fp32")
    assert exported.runtime.name == "onnx-fp32"
    for beam in (1, 3):
        assert (
            exported.caption(photo, num_beams=beam)[0].text
            == tiny_model.caption(photo, num_beams=beam)[0].text
        )


def test_half_precision_checkpoint_is_smaller_and_close(tiny_model, photo, tmp_path):
    full = tiny_model.save_pretrained(tmp_path / "fp32")
    half = tiny_model.save_pretrained(tmp_path / "fp16", dtype=torch.float16)
    assert (half / "model.safetensors").stat().st_size < 0.6 * (
        full / "model.safetensors"
    ).stat().st_size
    features = torch.from_numpy(
        tiny_model.captioner().encode(tiny_model.captioner().pixels([photo]))
    )
    ids = torch.tensor([[1, 3, 4, 5]])
    with torch.inference_mode():
        expected = tiny_model(features, ids)
        got = CaptionModel.from_pretrained(half)(features, ids)
    torch.testing.assert_close(got, expected, atol=2e-2, rtol=1e-2)


def test_model_sources_fail_clearly(tmp_path, monkeypatch):
    with pytest.raises(ModelNotFoundError, match="not a model folder"):
        resolve_model_dir(tmp_path / "missing" / "deeper")
    monkeypatch.setitem(BUNDLED_MODELS, "flickr8k-effnet", tmp_path / "nothing")
    with pytest.raises(ModelNotFoundError, match="the bundled model flickr8k-effnet is not in"):
        Captioner.from_pretrained()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="Hugging Face hub"):
        resolve_model_dir("someone/some-captioner")


def test_heatmap_rendering(tmp_path, photo):
    grid = np.zeros((3, 3), np.float32)
    grid[0, 2] = 1.0  # all attention on the top-right cell
    heat = np.asarray(overlay(photo, grid, opacity=1.0), np.int16)
    assert heat.shape == (120, 160, 3)
    hot, cold = heat[5, 155], heat[115, 5]
    assert hot.tolist() == colourise(np.array([1.0]))[0].tolist()
    assert cold.tolist() == colourise(np.array([0.0]))[0].tolist()
    attention = np.random.default_rng(0).random((2, 2, 3, 3, 3))
    np.testing.assert_allclose(select_map(attention, 1), attention[1].mean(axis=(0, 1)))
    np.testing.assert_allclose(select_map(attention, 0, layer=1, head=2), attention[0, 1, 2])
    paths = save_token_heatmaps(photo, ["a", "dog!"], attention, tmp_path / "maps")
    assert [p.name for p in paths] == ["00-a.png", "01-dog.png"]
    assert Image.open(paths[1]).size == photo.size


def test_caption_takes_file_objects_and_any_ordered_iterable(tiny_model, photo, tmp_path):
    path = tmp_path / "photo.png"
    photo.save(path)
    expected = tiny_model.caption(path, num_beams=1)[0].text
    with open(path, "rb") as binary_file:
        sources = [io.BytesIO(path.read_bytes()), binary_file, memoryview(path.read_bytes())]
        assert [c.text for c in tiny_model.caption(sources, num_beams=1)] == [expected] * 3
    generator = (image for image in [path, photo, str(path)])
    results = tiny_model.caption(generator, num_beams=1, batch_size=2)  # read 2 at a time
    assert [c.text for c in results] == [expected] * 3
    assert tiny_model.caption((path,), num_beams=1)[0].text == expected
    assert tiny_model.caption([], num_beams=1) == []


@pytest.mark.parametrize(
    "images, message",
    [
        (42, "cannot read an image from a int"),
        (None, "cannot read an image from a NoneType"),
        ({"a": "x.jpg"}, "cannot caption a dict"),
        ([42], "cannot read an image from a int"),
        (np.full((8, 8, 3), 128.0), "from 0 to 1"),
    ],
)
def test_caption_refuses_what_is_not_an_image(tiny_model, images, message):
    with pytest.raises(ImageLoadError, match=message):
        tiny_model.caption(images)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"beam": 3}, "unknown generation option"),
        ({"num_beams": 0}, "num_beams must be an integer from 1 to 16"),
        ({"max_new_tokens": 0}, "max_new_tokens must be an integer from 1 to 39"),
        ({"max_new_tokens": 40}, "max_new_tokens must be an integer from 1 to 39"),
        ({"do_sample": True, "temperature": 0}, "temperature must be a number >= 0.01"),
        ({"do_sample": True, "top_p": 0}, "top_p must be a number > 0.0"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
    ],
)
def test_caption_refuses_invalid_options_before_reading_images(tiny_model, options, message):
    unread = (pytest.fail("an image was read") for _ in range(1))
    with pytest.raises(ValueError, match=message):
        tiny_model.caption(unread, **options)


def test_several_captions_per_image_hang_off_the_best(tiny_model, photo):
    images = [photo, np.asarray(photo)[::-1].copy()]
    best = tiny_model.caption(images, num_beams=4)
    results = tiny_model.caption(images, num_beams=4, num_return_sequences=3, return_attention=True)
    assert len(results) == 2
    for single, result in zip(best, results):
        assert result.text == single.text and len(result.alternatives) == 2
        ranked = [result, *result.alternatives]
        assert len({c.text for c in ranked}) == 3
        assert [c.score for c in ranked] == sorted((c.score for c in ranked), reverse=True)
        for candidate in ranked:
            assert candidate.alternatives == [] or candidate is result
            assert candidate.attention.shape[0] == len(candidate.tokens) == len(candidate.token_ids)
    samples = tiny_model.caption(photo, do_sample=True, num_return_sequences=3, seed=5)[0]
    assert len(samples.alternatives) == 2 and samples.attention is None
    again = tiny_model.caption(photo, do_sample=True, num_return_sequences=3, seed=5)[0]
    assert [c.text for c in [samples, *samples.alternatives]] == [
        c.text for c in [again, *again.alternatives]
    ]


def test_an_option_by_its_old_name_is_one_type_error_naming_the_new_one(tiny_model, photo):
    unread = (pytest.fail("an image was read") for _ in range(1))
    expected = "^caption\\(\\) got 'beam_size': it is called num_beams now$"
    with pytest.raises(TypeError, match=expected):
        tiny_model.caption(unread, beam_size=3)
    with pytest.raises(TypeError, match=expected):
        tiny_model.captioner("torch").caption(photo, beam_size=3)
    with pytest.raises(ValueError, match="^generation option beam_size is called num_beams now$"):
        tiny_model.captioner("torch").generation_config(beam_size=3)


def test_configs_saved_with_old_option_names_still_load(tiny_model, photo, tmp_path):
    """Checkpoints and exports written before the options took Hugging Face's names say
    beam_size: it is read as num_beams."""
    directory = tiny_model.save_pretrained(tmp_path / "old")
    saved = json.loads((directory / "config.json").read_text())
    generation = saved["generation"]
    generation["beam_size"] = generation.pop("num_beams") + 1
    (directory / "config.json").write_text(json.dumps(saved))
    loaded = CaptionModel.from_pretrained(directory)
    assert loaded.config.generation.num_beams == tiny_model.config.generation.num_beams + 1
    generation["num_beams"] = 2
    (directory / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ModelLoadError, match="sets both beam_size and num_beams"):
        CaptionModel.from_pretrained(directory)


def test_configs_saved_before_trained_encoder_blocks_still_load(tiny_model, photo, tmp_path):
    """A config.json without encoder.trained_blocks (every model saved before it, the bundled
    one included) means the whole encoder frozen; one that asks for trained blocks its
    weights do not hold is one line."""
    directory = tiny_model.save_pretrained(tmp_path / "old")
    saved = json.loads((directory / "config.json").read_text())
    assert saved["encoder"].pop("trained_blocks") == 0
    (directory / "config.json").write_text(json.dumps(saved))
    loaded = CaptionModel.from_pretrained(directory)
    assert loaded.config.encoder.trained_blocks == 0 and loaded.decoder.image_stage is None
    assert loaded.caption(photo)[0].token_ids == tiny_model.caption(photo)[0].token_ids
    saved["encoder"]["trained_blocks"] = 1
    (directory / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ModelLoadError, match="not readable weights for this config"):
        CaptionModel.from_pretrained(directory)


def test_a_caption_converts_to_hugging_faces_image_to_text_pipeline_shape(tiny_model, photo):
    """What `pipeline("image-to-text")(image)` gives for one image: a list of dicts whose
    "generated_text" is a caption, the best first when it is asked for several."""
    single = tiny_model.caption(photo, num_beams=3)[0]
    assert single.to_pipeline() == [{"generated_text": single.text}]
    ranked = tiny_model.caption(photo, num_beams=3, num_return_sequences=3)[0]
    pipeline = ranked.to_pipeline()
    assert [set(row) for row in pipeline] == [{"generated_text"}] * 3
    assert [row["generated_text"] for row in pipeline] == [
        c.text for c in [ranked, *ranked.alternatives]
    ]
    assert pipeline[0]["generated_text"] == single.text


def test_a_folder_only_pytorch_can_run_needs_the_training_extra(tiny_model, photo, tmp_path):
    """Without torch, a saved folder that has no ONNX graphs is one line naming the extra, exit
    code 2, from the CLI; the bundled model (which has its graphs) needs no torch."""
    import subprocess
    import sys

    directory = tiny_model.save_pretrained(tmp_path / "model")
    photo.save(tmp_path / "photo.png")
    script = (
        "import sys; sys.modules['torch'] = None\n"  # `import torch` fails, as without the extra
        "from captioner.cli import main\n"
        "raise SystemExit(main(sys.argv[1:]))\n"
    )
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            "caption",
            "--model",
            str(directory),
            str(tmp_path / "photo.png"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 2, run.stderr
    assert run.stderr.count("\n") == 1 and "pip install 'captioner[train]'" in run.stderr


def test_a_training_run_folder_means_its_best_model(tiny_model, tmp_path, caplog):
    best = tiny_model.save_pretrained(tmp_path / "run" / "best")
    assert resolve_model_dir(tmp_path / "run") == best
    assert "is a training run: using its best model" in caplog.text


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: (d / "config.json").unlink(), "no config.json here"),
        (
            lambda d: (d / "config.json").write_text("{not json"),
            "config.json: not a readable model config",
        ),
        (
            lambda d: (d / "config.json").write_text('{"decoder": {"n_layerz": 2}}'),
            "unknown DecoderConfig fields",
        ),
        (
            lambda d: (d / "config.json").write_text('{"generation": [3]}'),
            "GenerationConfig settings must be a mapping, got [3]",
        ),
        (
            lambda d: (d / "tokenizer.json").write_text('{"kind": "clip-bpe", "vocab": [1, 2]}'),
            "tokenizer.json: not a readable tokenizer",
        ),
        (lambda d: (d / "tokenizer.json").unlink(), "tokenizer.json: not a readable tokenizer"),
        (
            lambda d: (d / "model.safetensors").write_bytes(b"\0" * 100),
            "model.safetensors: not readable weights",
        ),
        (lambda d: (d / "model.safetensors").unlink(), "model.safetensors: not readable weights"),
    ],
)
def test_a_damaged_model_folder_is_one_line_and_exit_code_2(
    tiny_model, photo, tmp_path, capsys, damage, message
):
    from captioner.cli import main

    directory = tiny_model.save_pretrained(tmp_path / "model")
    damage(directory)
    photo.save(tmp_path / "photo.png")
    assert main(["caption", "--model", str(directory), str(tmp_path / "photo.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_the_bundled_model_without_its_weights_says_where_they_are(tmp_path, monkeypatch):
    """A wheel ships the bundled model's graphs only: its PyTorch path is one clear line."""
    import shutil

    from captioner.hub import BUNDLED_DIR, ModelLoadError

    graphs_only = tmp_path / "flickr8k-effnet"
    shutil.copytree(BUNDLED_DIR, graphs_only, ignore=shutil.ignore_patterns("*.safetensors"))
    monkeypatch.setitem(BUNDLED_MODELS, "flickr8k-effnet", graphs_only)
    assert Captioner.from_pretrained().runtime.name == "onnx-int8"  # the base install's path
    with pytest.raises(ModelLoadError, match="PyTorch weights are not in this installation"):
        CaptionModel.from_pretrained("flickr8k-effnet")
