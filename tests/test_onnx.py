"""The exported model: its graphs compute what PyTorch computes (fp32 ONNX Runtime gives the same
captions, greedy and beam 3, on generated images and Flickr8k dev photos), the int8 decoder stays
within 0.005 CIDEr-D of fp32, `captioner.json` decodes captions as the tokenizer does, and the
runtime choice ("auto", "onnx", "onnx-fp32", "torch") behaves as documented."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_model import build_tiny_model

from captioner import Captioner
from captioner.cache import cache_root
from captioner.cli import main
from captioner.onnx.export import ImageMemory, kv_shape
from captioner.runtime.onnx import DESCRIPTION_FILE, cpu_session, kv_names
from captioner.torch_model import CaptionModel

pytest.importorskip("onnxruntime")


@pytest.fixture(autouse=True)
def onnx_cache(tmp_path_factory, monkeypatch):
    """Exports go to one folder per test session, not the user's cache."""
    monkeypatch.setenv("CAPTIONER_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "onnx-cache"))


@pytest.fixture(scope="module")
def tiny_dir(tiny_model, tmp_path_factory):
    return tiny_model.save_pretrained(tmp_path_factory.mktemp("tiny"))


def generated_images(count: int) -> list[Image.Image]:
    """Gradients, blocks and noise of different sizes and aspect ratios."""
    rng = np.random.default_rng(0)
    images = []
    for i in range(count):
        height, width = int(rng.integers(120, 400)), int(rng.integers(120, 400))
        y, x = np.mgrid[0:height, 0:width]
        pixels = np.stack([x * (i + 1) % 255, y * 2 % 255, (x + y * i) % 255], -1).astype(float)
        top, left = int(rng.integers(0, height // 2)), int(rng.integers(0, width // 2))
        pixels[top : top + height // 3, left : left + width // 3] = rng.integers(0, 255, 3)
        pixels += rng.normal(0, 12, pixels.shape)
        images.append(Image.fromarray(pixels.clip(0, 255).astype(np.uint8)))
    return images


def token_ids(model: Captioner, images, **options) -> list[list[int]]:
    return [c.token_ids for c in model.caption(images, **options)]


def test_decoder_graphs_compute_what_pytorch_computes(tiny_model, tmp_path):
    """Cross keys/values, logits, the new cache and the attention weights, at several positions
    (the first step has an empty past), to float rounding."""
    from captioner.onnx.export import FILES, export_decoder

    decoder = tiny_model.decoder
    layers = decoder.config.n_layers
    export_decoder(decoder, tmp_path, ["fp32"])
    image = cpu_session(tmp_path / FILES["fp32"]["image"], 1)
    step = cpu_session(tmp_path / FILES["fp32"]["step"], 1)
    torch.manual_seed(0)
    features = torch.randn(3, decoder.config.image_tokens, decoder.config.image_dim)
    ids = torch.randint(3, decoder.config.vocab_size, (3, 5))
    with torch.inference_mode():
        expected_cross = ImageMemory(decoder)(features)
        expected = decoder(ids, decoder.encode_image(features), need_weights=True)
    cross = image.run(kv_names("cross", layers), {"features": features.numpy()})
    for got, want in zip(cross, expected_cross, strict=True):
        np.testing.assert_allclose(got, want.numpy(), atol=1e-5)
    past = [np.zeros(kv_shape(decoder.config, 3, 0), np.float32)] * (2 * layers)
    for position in range(ids.shape[1]):
        inputs = {
            "ids": ids[:, position : position + 1].numpy(),
            **dict(zip(kv_names("past", layers), past)),
            **dict(zip(kv_names("cross", layers), cross)),
        }
        logits, *past, attention = step.run(None, inputs)
        np.testing.assert_allclose(logits, expected.logits[:, position].numpy(), atol=1e-4)
        want = expected.cross_attention[:, :, :, position].numpy()
        np.testing.assert_allclose(attention, want, atol=1e-5)
        assert [p.shape for p in past] == [kv_shape(decoder.config, 3, position + 1)] * 2 * layers
    with torch.inference_mode():  # the cache the graph hands back is PyTorch's own
        cache = decoder.new_cache()
        decoder(ids, decoder.encode_image(features), cache)
    torch_past = [tensor for kv in cache.self_kv for tensor in kv]
    for got, want in zip(past, torch_past, strict=True):
        np.testing.assert_allclose(got, want.numpy(), atol=1e-5)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_fp32_onnx_gives_pytorchs_captions_on_generated_images(tiny_dir, num_beams):
    images = generated_images(6)
    torch_model = Captioner.from_pretrained(tiny_dir, runtime="torch")
    onnx_model = Captioner.from_pretrained(tiny_dir, runtime="onnx-fp32")
    expected = torch_model.caption(images, num_beams=num_beams, return_attention=True)
    got = onnx_model.caption(images, num_beams=num_beams, return_attention=True)
    assert onnx_model.runtime.name == "onnx-fp32"
    assert [c.token_ids for c in got] == [c.token_ids for c in expected]
    for mine, theirs in zip(got, expected):
        assert mine.score == pytest.approx(theirs.score, abs=1e-4)
        assert mine.attention.shape == theirs.attention.shape
        np.testing.assert_allclose(mine.attention, theirs.attention, atol=1e-5)


def test_fp32_onnx_gives_pytorchs_captions_on_flickr8k_dev(flickr8k):
    from captioner.data import load_records

    paths = [r.image for r in load_records(flickr8k, "dev")[:40]]
    torch_model = Captioner.from_pretrained(runtime="torch")
    onnx_model = Captioner.from_pretrained(runtime="onnx-fp32")
    for num_beams in (1, 3):
        expected = token_ids(torch_model, paths, num_beams=num_beams)
        assert token_ids(onnx_model, paths, num_beams=num_beams) == expected


def test_int8_decoder_stays_within_0005_cider_d_of_fp32_on_flickr8k_dev(flickr8k, tmp_path):
    """All 1000 dev photos, greedy and beam 3, scored as `captioner eval` scores them (the same
    encoder grids for both; bench/onnx_parity.py prints the figures)."""
    from captioner.data import load_records
    from captioner.evaluation.metrics import caption_metrics
    from captioner.features import build_cache, fingerprint, image_source

    records = load_records(flickr8k, "dev")
    assert len(records) == 1000
    references = {r.image_id: r.captions for r in records}
    models = {r: Captioner.from_pretrained(runtime=r) for r in ("onnx-fp32", "onnx")}
    sources = [image_source(r) for r in records]
    encoder = CaptionModel.from_pretrained().encoder
    cache = build_cache(encoder, sources, tmp_path, progress=False)
    features = np.stack([cache[fingerprint(s)] for s in sources]).astype(np.float32)
    for beam in (1, 3):
        cider = {}
        for runtime, model in models.items():
            generation = model.generation_config(num_beams=beam)
            texts = []
            for start in range(0, len(features), 50):
                chunk = features[start : start + 50]
                texts += [c.text for c in model.generate_from_features(chunk, generation)]
            predictions = {r.image_id: text for r, text in zip(records, texts)}
            cider[runtime] = caption_metrics(predictions, references, meteor=False)["cider"]
        assert abs(cider["onnx"] - cider["onnx-fp32"]) <= 0.005, (beam, cider)
    assert [m.runtime.name for m in models.values()] == ["onnx-fp32", "onnx-int8"]


def test_export_command_writes_graphs_and_a_description_that_decodes_captions(
    tiny_dir, tmp_path, capsys
):
    out = tmp_path / "onnx"
    assert main(["export", str(tiny_dir), "--onnx", str(out)]) == 0
    assert "MB" in capsys.readouterr().out
    description = json.loads((out / DESCRIPTION_FILE).read_text())
    for files in description["variants"].values():
        assert all((out / name).is_file() for name in files.values())
    model = CaptionModel.from_pretrained(tiny_dir)
    tokens = description["tokens"]
    assert (tokens["start_id"], tokens["end_id"]) == (model.special.start, model.special.end)
    assert tokens["banned_ids"] == list(model.special.banned)
    assert len(tokens["pieces"]) == description["decoder"]["vocab_size"]
    assert description["generation"]["no_repeat_ngram_size"] == 3
    assert description["preprocess"]["crop_size"] == model.encoder.preprocess.crop_size
    # A caption from the pieces and the rules, as a JavaScript port would do it.
    for text in ["A dog runs across the grass .", "it 's a girl , on a bike !"]:
        ids = [i for i in model.tokenizer.encode(text) if i not in (1, 0)]
        joined = re.sub(r"\s+", " ", "".join(tokens["pieces"][i] for i in ids)).strip()
        for pattern, replacement in tokens["detokenize"]:
            joined = re.sub(pattern, re.sub(r"\$(\d)", r"\\\1", replacement), joined)
        assert joined == model.tokenizer.decode(ids)
    # The encoder graph gives the encoder's tokens.
    pixels = model.captioner().pixels(generated_images(2))
    encoder = cpu_session(out / description["variants"]["int8"]["encoder"], 1)
    grid = encoder.run(None, {"pixels": pixels})[0]
    np.testing.assert_allclose(grid, model.encoder(torch.from_numpy(pixels)).tokens, atol=1e-4)
    assert grid.shape[1:] == (description["decoder"]["image_tokens"], description["encoder"]["dim"])
    # The folder is a whole model: captioned without PyTorch, as its cached export captions.
    exported = Captioner.from_pretrained(out)
    assert exported.runtime.name == "onnx-int8" and exported.runtime.directory == out
    images = generated_images(3)
    assert token_ids(exported, images) == token_ids(Captioner.from_pretrained(tiny_dir), images)


def test_export_command_usage_errors_are_one_line(tiny_dir, tmp_path, capsys):
    assert main(["export", str(tiny_dir)]) == 2
    assert "--onnx DIR" in capsys.readouterr().err
    assert main(["export", str(tiny_dir), "--onnx", str(tmp_path / "x"), "--half"]) == 2
    assert "--half" in capsys.readouterr().err


def test_a_folder_without_graphs_runs_its_cached_export_and_a_model_in_memory_pytorch(
    tiny_dir, tiny_model
):
    assert Captioner.from_pretrained(tiny_dir).runtime.name == "onnx-int8"
    assert Captioner.from_pretrained(tiny_dir, runtime="torch").runtime.name == "torch"
    assert tiny_model.captioner().runtime.name == "torch"


def test_onnx_runtime_reexports_changed_weights_and_reuses_the_cache(tiny_dir, monkeypatch):
    model = CaptionModel.from_pretrained(tiny_dir)
    first = model.captioner("onnx-fp32")
    assert model.captioner("onnx-fp32") is first
    again = CaptionModel.from_pretrained(tiny_dir)
    monkeypatch.setattr("captioner.onnx.cache.export_onnx", pytest.fail)  # cached: no export
    again.captioner("onnx-fp32")
    monkeypatch.undo()
    with torch.no_grad():  # as an optimiser step would
        model.decoder.final_norm.bias.add_(0.5)
    changed = model.captioner("onnx-fp32")
    assert changed is not first and changed.runtime.directory != first.runtime.directory
    images = generated_images(2)
    reference = CaptionModel.from_pretrained(tiny_dir)
    with torch.no_grad():
        reference.decoder.final_norm.bias.add_(0.5)
    assert token_ids(changed, images, num_beams=1) == token_ids(reference, images, num_beams=1)


def test_a_damaged_cached_export_is_rebuilt_and_stale_scratch_folders_go(tiny_dir):
    """A truncated graph (a full disk, a killed copy) must not fail every later call."""
    import os
    import time

    from captioner.onnx.cache import STALE_EXPORT_S

    images = generated_images(2)
    expected = token_ids(Captioner.from_pretrained(tiny_dir), images)
    directory = Captioner.from_pretrained(tiny_dir).runtime.directory
    step = directory / "decoder_step.int8.onnx"
    step.write_bytes(step.read_bytes()[:1000])
    stale = directory.parent / "export-killed"
    stale.mkdir()
    old = time.time() - STALE_EXPORT_S - 60
    os.utime(stale, (old, old))
    assert token_ids(Captioner.from_pretrained(tiny_dir), images) == expected
    assert step.stat().st_size > 1000 and not stale.exists()


def test_unknown_runtime_is_a_clear_error(tiny_dir):
    with pytest.raises(ValueError, match="unknown runtime 'tensorrt'; choose one of auto"):
        Captioner.from_pretrained(tiny_dir, runtime="tensorrt")


def test_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CAPTIONER_CACHE_DIR", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    monkeypatch.delenv("CAPTIONER_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_root() == tmp_path / "x" / "captioner"


def test_step_graph_shares_an_image_among_its_consecutive_rows(tiny_model, tmp_path):
    """Beam search feeds each image once for its beams: the step graph then gives what it gives
    with the image repeated per row."""
    from captioner.onnx.export import FILES, export_decoder

    decoder = tiny_model.decoder
    layers = decoder.config.n_layers
    export_decoder(decoder, tmp_path, ["fp32"])
    image = cpu_session(tmp_path / FILES["fp32"]["image"], 1)
    step = cpu_session(tmp_path / FILES["fp32"]["step"], 1)
    features = torch.randn(2, decoder.config.image_tokens, decoder.config.image_dim).numpy()
    shared = image.run(kv_names("cross", layers), {"features": features})
    repeated = [np.repeat(tensor, 3, axis=0) for tensor in shared]
    past = [np.random.default_rng(0).normal(size=kv_shape(decoder.config, 6, 2))] * (2 * layers)
    inputs = {
        "ids": np.arange(3, 9).reshape(6, 1),
        **{name: tensor.astype(np.float32) for name, tensor in zip(kv_names("past", layers), past)},
    }
    got = step.run(None, {**inputs, **dict(zip(kv_names("cross", layers), shared))})
    want = step.run(None, {**inputs, **dict(zip(kv_names("cross", layers), repeated))})
    for mine, theirs in zip(got, want, strict=True):
        np.testing.assert_allclose(mine, theirs, atol=1e-5)


def test_int8_step_graph_looks_tokens_up_in_int8_rows(tiny_model, tmp_path):
    """The token embedding is stored once as int8 rows with a scale each (no float32 copy for
    the lookup), and a graph whose lookup alone is quantised stays within rounding of fp32."""
    import onnx

    from captioner.onnx.export import FILES, export_decoder, quantize_lookups

    decoder = tiny_model.decoder
    config = decoder.config
    export_decoder(decoder, tmp_path, ["fp32", "int8"])
    table = [config.vocab_size, config.d_model]
    int8 = onnx.load(str(tmp_path / FILES["int8"]["step"])).graph
    floats = [t for t in int8.initializer if t.data_type == onnx.TensorProto.FLOAT]
    assert not [t.name for t in floats if list(t.dims) == table]
    stored = {t.name: t for t in int8.initializer}
    tables = [
        stored[n.input[0]] for n in int8.node if n.op_type == "Gather" and n.input[0] in stored
    ]
    assert [t.data_type for t in tables if list(t.dims) == table] == [onnx.TensorProto.INT8]
    fp32 = onnx.load(str(tmp_path / FILES["fp32"]["step"]))
    assert quantize_lookups(fp32.graph) == 1
    layers = config.n_layers
    inputs = {
        "ids": np.arange(3, 7).reshape(4, 1),
        **{n: np.zeros(kv_shape(config, 4, 0), np.float32) for n in kv_names("past", layers)},
        **{
            n: np.random.default_rng(1)
            .normal(size=kv_shape(config, 4, config.image_tokens))
            .astype(np.float32)
            for n in kv_names("cross", layers)
        },
    }
    exact = cpu_session(tmp_path / FILES["fp32"]["step"], 1).run(["logits"], inputs)[0]
    looked_up = cpu_session(fp32.SerializeToString(), 1).run(["logits"], inputs)[0]
    np.testing.assert_allclose(looked_up, exact, atol=0.02)
    assert not np.array_equal(looked_up, exact)


def test_onnx_runtime_refuses_features_of_another_grid(tiny_dir):
    runtime = Captioner.from_pretrained(tiny_dir, runtime="onnx").runtime
    tokens = runtime.image_tokens
    with pytest.raises(ValueError, match=f"reads {tokens} image tokens a row"):
        runtime.start(np.zeros((2, tokens + 1, 8), np.float32), 1)


def test_a_saved_folder_takes_its_own_graphs_and_then_captions_without_pytorch(tiny_dir, tmp_path):
    """Re-saved and exported into one folder (as the bundled model is made): the export's
    config and vocabulary equal the saved ones, so nothing is refused; the folder then runs
    its own int8 graphs."""
    out = tmp_path / "model"
    assert (
        main(
            ["export", str(tiny_dir), str(out), "--half", "--onnx", str(out), "--variants", "int8"]
        )
        == 0
    )
    assert (out / "model.safetensors").is_file() and (out / "decoder_step.int8.onnx").is_file()
    model = Captioner.from_pretrained(out)
    assert model.runtime.name == "onnx-int8" and model.runtime.directory == out
    assert model.caption(generated_images(1))[0].text


def rows_of_different_magnitudes(rng, shape: tuple[int, ...]) -> np.ndarray:
    """Normal values, each row (first axis) scaled differently, as different images give."""
    scale = rng.uniform(0.2, 5.0, (shape[0],) + (1,) * (len(shape) - 1))
    return (rng.normal(size=shape) * scale).astype(np.float32)


def test_int8_graphs_give_each_row_the_same_bits_in_any_batch(tiny_model, tmp_path):
    """Each row's int8 results, image and step graph, are bit for bit what it gets alone, in
    a reversed batch, and on one or two threads: the activations are quantised per row."""
    from captioner.onnx.export import FILES, export_decoder

    config = tiny_model.decoder.config
    layers, rows, rng = config.n_layers, 5, np.random.default_rng(0)
    export_decoder(tiny_model.decoder, tmp_path, ["int8"])
    image_inputs = {
        "features": rows_of_different_magnitudes(rng, (rows, config.image_tokens, config.image_dim))
    }
    step_inputs = {
        "ids": rng.integers(3, config.vocab_size, (rows, 1)),
        **{
            name: rows_of_different_magnitudes(rng, kv_shape(config, rows, 3))
            for name in kv_names("past", layers)
        },
        **{
            name: rows_of_different_magnitudes(rng, kv_shape(config, rows, config.image_tokens))
            for name in kv_names("cross", layers)
        },
    }
    for graph, inputs in [("image", image_inputs), ("step", step_inputs)]:
        batch = cpu_session(tmp_path / FILES["int8"][graph], 1).run(None, inputs)
        two_threads = cpu_session(tmp_path / FILES["int8"][graph], 2)
        reversed_batch = two_threads.run(None, {k: v[::-1].copy() for k, v in inputs.items()})
        for got, want in zip(reversed_batch, batch, strict=True):
            assert np.array_equal(got[::-1], want), graph
        for row in range(rows):
            alone = two_threads.run(None, {k: v[row : row + 1] for k, v in inputs.items()})
            for got, want in zip(alone, batch, strict=True):
                assert np.array_equal(got[0], want[row]), (graph, row)


def test_int8_products_cannot_saturate_a_16_bit_pair_sum(tiny_model, tmp_path):
    """x86 CPUs without VNNI multiply uint8 by int8 in pairs summed in int16 with saturation
    (`vpmaddubsw`): with activations in 0..255 around 128 and weights within 63, no pair
    reaches 32767 (255 * 63 * 2 = 32130), so those CPUs compute the integer products every
    other kernel computes."""
    import onnx
    from onnx import numpy_helper

    from captioner.onnx.export import FILES, export_decoder

    export_decoder(tiny_model.decoder, tmp_path, ["int8"])
    for graph in FILES["int8"].values():
        model = onnx.load(str(tmp_path / graph))
        values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        products = [n for n in model.graph.node if n.op_type == "MatMulIntegerToFloat"]
        assert products, graph
        assert not [n.op_type for n in model.graph.node if n.op_type.startswith("Dynamic")]
        for node in products:
            weights = values[node.input[1]]
            assert weights.dtype == np.int8 and np.abs(weights.astype(int)).max() <= 63
            assert values[node.input[4]].dtype == np.uint8 and values[node.input[4]] == 128


@pytest.fixture(scope="module")
def staged_dir(tmp_path_factory):
    """The tiny model with Lite0's last block and head in its decoder (trained_blocks=1), their
    weights moved off the ImageNet ones as training moves them."""
    model = build_tiny_model(trained_blocks=1)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.decoder.image_stage.parameters():
            parameter.mul_(1 + 0.1 * torch.randn(parameter.shape, generator=generator))
    return model.save_pretrained(tmp_path_factory.mktemp("staged"))


def test_trained_encoder_blocks_are_exported_in_the_decoders_image_graph(staged_dir, tmp_path):
    """encoder.onnx stops where the trained blocks start and decoder_image runs the decoder's
    copy of them: the fp32 graphs compute PyTorch's image memory and write its captions (greedy
    and beam 3); the int8 variant quantises MatMuls only, so its convolutions stay float32 and
    its image memory stays within rounding of fp32; the exported folder captions as the cached
    export does."""
    import onnx

    from captioner.onnx.export import ENCODER_FILE, FILES

    out = tmp_path / "onnx"
    assert main(["export", str(staged_dir), "--onnx", str(out)]) == 0
    description = json.loads((out / DESCRIPTION_FILE).read_text())
    assert description["encoder"]["dim"] == 192
    model = CaptionModel.from_pretrained(staged_dir)
    images = generated_images(4)
    pixels = model.captioner().pixels(images)
    grid = cpu_session(out / ENCODER_FILE, 1).run(None, {"pixels": pixels})[0]
    assert grid.shape == (4, 49, 192)
    np.testing.assert_allclose(grid, model.encoder(torch.from_numpy(pixels)).tokens, atol=1e-4)
    with torch.inference_mode():
        expected = ImageMemory(model.decoder)(torch.from_numpy(grid))
    cross = {
        variant: cpu_session(out / FILES[variant]["image"], 1).run(None, {"features": grid})
        for variant in ("fp32", "int8")
    }
    for got, want in zip(cross["fp32"], expected, strict=True):
        np.testing.assert_allclose(got, want.numpy(), atol=1e-4)
    for got, want in zip(cross["int8"], cross["fp32"], strict=True):
        assert np.abs(got - want).max() <= 0.05 * np.abs(want).max()
    convolutions = []
    for variant in ("fp32", "int8"):
        graph = onnx.load(str(out / FILES[variant]["image"])).graph
        stored = {t.name: t for t in graph.initializer}
        weights = [stored[n.input[1]] for n in graph.node if n.op_type == "Conv"]
        assert all(w.data_type == onnx.TensorProto.FLOAT for w in weights), variant
        convolutions.append(len(weights))
    assert convolutions[0] == convolutions[1] > 0

    torch_model = Captioner.from_pretrained(staged_dir, runtime="torch")
    fp32 = Captioner.from_pretrained(staged_dir, runtime="onnx-fp32")
    for num_beams in (1, 3):
        want = torch_model.caption(images, num_beams=num_beams)
        got = fp32.caption(images, num_beams=num_beams)
        assert [c.token_ids for c in got] == [c.token_ids for c in want]
        assert [c.score for c in got] == pytest.approx([c.score for c in want], abs=1e-4)
    int8 = Captioner.from_pretrained(out)
    assert int8.runtime.name == "onnx-int8"
    assert token_ids(int8, images) == token_ids(Captioner.from_pretrained(staged_dir), images)
