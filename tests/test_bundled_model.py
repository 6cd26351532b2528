"""The default model that ships inside the package: loads offline, describes real photos, and
gives exactly the captions and logits recorded here (a golden test, as Hugging Face's
`test_inference_coco_en`): a change in preprocessing, fp16 loading, the encoder's runtime or
beam search that moves a caption fails it.

After a deliberate change (a new bundled model), `python tests/test_bundled_model.py` prints the
current values in the form of `GOLDEN`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from captioner import Captioner
from captioner.hub import BUNDLED_DIR

DOG_PHOTOS = ["1032122270_ea6f0beedb", "1130369873_d80a1aa59c", "1164131282_b30926f332"]

# Each runtime that decodes with the bundled model must give its golden values: "torch" (all in
# PyTorch) and the default, "auto" (the encoder and the int8 decoder graphs in ONNX Runtime; the
# float32 graphs give PyTorch's captions, tests/test_onnx.py).
RUNTIMES = ["torch", "auto"]
# Flickr8k dev photos (a dog in water, a snowboarder, a girl on a beach), and the image drawn by
# `generated_image`, which needs no data. The snowboarder and the drawn image have greedy and
# beam-3 captions that differ.
GOLDEN_PHOTOS = ["1130369873_d80a1aa59c", "2198511848_311d8a8c2f", "2726262796_03bd63a155"]
GENERATED = "generated"
# Words whose first-step logits are pinned (with the end token's): how most captions start, and
# a few that they go on with.
LOGIT_WORDS = ["a", "the", "two", "man", "dog", "girl", "water", "."]


@dataclass(frozen=True)
class Golden:
    greedy: str
    beam3: str
    logits: tuple[float, ...]  # first decoding step: the end token, then LOGIT_WORDS


GOLDEN = {
    "torch": {
        "1130369873_d80a1aa59c": Golden(
            greedy="a brown dog is playing in the water with a ball in its mouth.",
            beam3="a brown dog is playing in the water with a ball in its mouth.",
            logits=(-1.2429, 9.8944, 6.7588, 1.4116, -0.4816, 4.8361, -0.0471, -0.6017, -0.3580),
        ),
        "2198511848_311d8a8c2f": Golden(
            greedy="a snowboarder is jumping off a snowy mountain.",
            beam3="a snowboarder is jumping off of a snowy mountain.",
            logits=(-1.2979, 10.1154, 6.4107, 3.8226, 4.3501, 0.5935, 0.4551, -0.6609, 0.0190),
        ),
        "2726262796_03bd63a155": Golden(
            greedy="a girl in a bathing suit is standing on the beach.",
            beam3="a girl in a bathing suit is standing on the beach.",
            logits=(-2.3090, 9.1120, 6.0863, 3.4745, 1.8063, -0.2983, 6.0068, 1.5507, -0.9054),
        ),
        "generated": Golden(
            greedy="a red - - haired man is sitting in a green sky.",
            beam3="a man in a yellow shirt is sitting in a green sky.",
            logits=(-1.5505, 9.1084, 5.9602, -0.6625, 2.8353, 1.6447, -0.8655, -2.7762, 0.0046),
        ),
    },
    "onnx-int8": {
        "1130369873_d80a1aa59c": Golden(
            greedy="a brown dog is playing in the water with a ball in its mouth.",
            beam3="a brown dog is playing in the water with a ball in its mouth.",
            logits=(-1.2608, 9.9063, 6.7645, 1.3932, -0.4733, 4.8379, -0.0308, -0.5759, -0.3565),
        ),
        "2198511848_311d8a8c2f": Golden(
            greedy="a snowboarder is jumping off a snowy mountain.",
            beam3="a snowboarder is jumping off of a snowy mountain.",
            logits=(-1.2778, 10.1007, 6.4038, 3.7811, 4.3794, 0.6189, 0.4234, -0.6299, -0.0044),
        ),
        "2726262796_03bd63a155": Golden(
            greedy="a girl in a bathing suit is standing on the beach.",
            beam3="a girl in a bathing suit is standing on the beach.",
            logits=(-2.3430, 9.1133, 6.0647, 3.4062, 1.8444, -0.2817, 6.0319, 1.5732, -0.9513),
        ),
        "generated": Golden(
            greedy="a red - - haired man is sitting in a green sky.",
            beam3="a man in a yellow shirt is sitting in a green sky.",
            logits=(-1.5280, 9.1206, 5.9753, -0.6902, 2.8377, 1.6586, -0.8729, -2.7539, 0.0109),
        ),
    },
}


def load_bundled(runtime: str) -> Captioner:
    return Captioner.from_pretrained("flickr8k-effnet", runtime=runtime)


def generated_image() -> Image.Image:
    """A 320x240 picture drawn from a formula: blue sky over green grass, a sun and a red shape
    on the grass, with fine noise from a seeded PCG64 stream (stable across numpy
    versions)."""
    y, x = np.mgrid[0:240, 0:320].astype(np.float32)
    pixels = np.zeros((240, 320, 3), np.float32)
    sky = y < 140
    pixels[sky] = np.stack([90 + 0.4 * y, 150 + 0.5 * y, 235 + 0 * y], axis=-1)[sky]
    pixels[~sky] = np.stack([40 + 0.2 * x, 140 - 0.2 * (y - 140), 40 + 0 * x], axis=-1)[~sky]
    pixels[(x - 260) ** 2 + (y - 50) ** 2 < 22**2] = (255, 230, 120)
    pixels[((x - 120) / 45) ** 2 + ((y - 165) / 18) ** 2 < 1] = (200, 40, 40)
    pixels += np.random.default_rng(0).normal(0, 4, pixels.shape)
    return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8))


def first_step_logits(model: Captioner, image: Image.Image | Path) -> list[float]:
    """The decoder's logits after the start token: the end token's, then LOGIT_WORDS'."""
    pieces = [model.tokenizer.encode(word) for word in LOGIT_WORDS]
    assert all(len(ids) == 3 for ids in pieces)  # start, one piece, end
    ids = [model.tokenizer.end_id, *(ids[1] for ids in pieces)]
    decoding = model.runtime.start(model.encode(model.pixels([image])), rows_per_image=1)
    logits, _ = decoding.step(np.array([model.tokenizer.start_id]))
    return logits[0, ids].tolist()


@pytest.fixture(scope="module", params=RUNTIMES)
def bundled(request) -> Captioner:
    model = load_bundled(request.param)
    assert model.runtime.name == {"torch": "torch", "auto": "onnx-int8"}[request.param]
    return model


def test_bundled_model_is_small_and_recorded(bundled):
    def megabytes(pattern: str) -> float:
        return sum(p.stat().st_size for p in BUNDLED_DIR.glob(pattern)) / 1e6

    # What the base install runs, and the PyTorch weights beside it (float16: the decoder and
    # the encoder's trained last blocks).
    assert megabytes("*.onnx") <= 40 and megabytes("*.safetensors") <= 34
    assert (BUNDLED_DIR / "captioner.json").is_file()
    assert bundled.config.encoder.name == "efficientnet-lite2"
    assert bundled.config.metadata["dev_metrics"]["cider"] > 0.4


def test_bundled_model_sees_dogs(bundled, flickr8k):
    """Every reference of these dev photos mentions dogs; so must the model."""
    paths = [flickr8k / "images" / f"{name}.jpg" for name in DOG_PHOTOS]
    for result in bundled.caption(paths, num_beams=3):
        assert "dog" in result.text, result.text


@pytest.mark.parametrize("name", [*GOLDEN_PHOTOS, GENERATED])
def test_golden_captions_and_logits(bundled, name, request):
    if name == GENERATED:
        image = generated_image()
    else:  # skips without the data
        image = request.getfixturevalue("flickr8k") / "images" / f"{name}.jpg"
    golden = GOLDEN[bundled.runtime.name][name]
    assert bundled.caption(image, num_beams=1)[0].text == golden.greedy
    assert bundled.caption(image, num_beams=3)[0].text == golden.beam3
    np.testing.assert_allclose(first_step_logits(bundled, image), golden.logits, atol=1e-3)


def caption_texts(model: Captioner, images: list, num_beams: int) -> list[str]:
    return [c.text for c in model.caption(images, num_beams=num_beams)]


def test_default_captions_do_not_depend_on_the_batch(flickr8k):
    """The default path (the int8 decoder) writes each photo's caption whatever else is in its
    call: 48 dev photos together, one by one, reversed, and shuffled in calls of other sizes,
    greedy and beam 3 (the per-tensor int8 quantisation changed 4 of these captions)."""
    from captioner.data import load_records

    model = load_bundled("auto")
    paths = [record.image for record in load_records(flickr8k, "dev")[:48]]
    order = np.random.default_rng(0).permutation(len(paths)).tolist()
    sizes = [7, 2, 16, 1, 22]  # calls over the shuffled photos
    for num_beams in (1, 3):
        texts = partial(caption_texts, model, num_beams=num_beams)
        together = texts(paths)
        assert [texts([path])[0] for path in paths] == together
        assert texts(paths[::-1])[::-1] == together
        shuffled, start = [], 0
        for size in sizes:
            shuffled += texts([paths[i] for i in order[start : start + size]])
            start += size
        assert start == len(paths)
        assert [shuffled[order.index(i)] for i in range(len(paths))] == together


def print_golden(flickr8k: Path, runtime: str) -> None:
    model = load_bundled(runtime)
    print(f"    {model.runtime.name!r}: {{")
    for name in [*GOLDEN_PHOTOS, GENERATED]:
        image = generated_image() if name == GENERATED else flickr8k / "images" / f"{name}.jpg"
        greedy = model.caption(image, num_beams=1)[0].text
        beam3 = model.caption(image, num_beams=3)[0].text
        logits = ", ".join(f"{value:.4f}" for value in first_step_logits(model, image))
        print(
            f"        {name!r}: Golden(\n            greedy={greedy!r},\n            beam3={beam3!r},"
        )
        print(f"            logits=({logits}),\n        ),")
    print("    },")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import FLICKR8K

    for runtime in RUNTIMES:
        print_golden(FLICKR8K, runtime)


def test_the_bundled_model_captions_by_name_without_torch():
    """Its own graphs ship with it: `import torch` fails, and the caption is the golden one."""
    import subprocess

    script = (
        "import sys; sys.modules['torch'] = None\n"  # as in a plain `pip install captioner`
        "from captioner import Captioner\n"
        "model = Captioner.from_pretrained('flickr8k-effnet')\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from test_bundled_model import generated_image\n"
        "print(model.runtime.name, model.caption(generated_image(), num_beams=1)[0].text)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script, str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == f"onnx-int8 {GOLDEN['onnx-int8'][GENERATED].greedy}"
