"""CLIPScore and RefCLIPScore: the scorer's figures equal the paper's formulas (Hessel et al.
2021) computed here one image and one caption at a time from a tiny random CLIP's own
embeddings, and `captioner eval --clip` reports them beside the other metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_clip import save_tiny_clip
from training_data import make_colour_dataset
from transformers import CLIPModel

from captioner.cli import main
from captioner.evaluation.clipscore import CLIPScorer
from captioner.tokenizer import CaptionTokenizer

CAPTIONS = ["a dog runs across the grass", "two red squares", "a man climbs a very tall rock wall"]
REFERENCES = [
    ["a dog on grass", "a brown dog running outside", "the dog is fast"],
    ["red blocks"],
    ["a climber on a cliff", "someone climbing rocks"],
]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("tiny-clip"), seed=3)


def images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 255, (40 + 9 * i, 50, 3), dtype=np.uint8)) for i in range(3)
    ]


def features(output) -> torch.Tensor:
    """get_*_features: a tensor (transformers 4) or an output whose pooler_output it is (5)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class Independent:
    """Unit embeddings straight from the tiny CLIP, one image or caption at a time."""

    def __init__(self, clip_dir, scorer: CLIPScorer):
        self.model = CLIPModel.from_pretrained(clip_dir).eval()
        self.bpe = CaptionTokenizer()
        self.preprocess = scorer.preprocess

    @torch.no_grad()
    def text(self, text: str) -> torch.Tensor:
        ids = torch.tensor([self.bpe.clip_ids(f"A photo depicts {text}")])  # alone: no padding
        vector = features(self.model.get_text_features(input_ids=ids))[0]
        return vector / vector.norm()

    @torch.no_grad()
    def image(self, image: Image.Image) -> torch.Tensor:
        pixels = torch.from_numpy(self.preprocess(image))[None]
        vector = features(self.model.get_image_features(pixel_values=pixels))[0]
        return vector / vector.norm()

    def clip_s(self, image: Image.Image, caption: str) -> float:
        return 2.5 * max(float(torch.dot(self.text(caption), self.image(image))), 0.0)


def test_scores_match_the_papers_formulas(clip_dir):
    scorer = CLIPScorer(str(clip_dir), batch_size=2)  # batches of 2 pad captions of any length
    got = scorer.score(images(), CAPTIONS, REFERENCES)

    independent = Independent(clip_dir, scorer)
    text_vector = independent.text
    clip_s, ref_clip_s = [], []
    with torch.no_grad():
        for image, caption, references in zip(images(), CAPTIONS, REFERENCES):
            c = text_vector(caption)
            score = independent.clip_s(image, caption)
            best = max(max(float(torch.dot(c, text_vector(r))) for r in references), 0.0)
            clip_s.append(score)
            ref_clip_s.append(2 * score * best / (score + best) if score + best > 0 else 0.0)
    assert got.per_image == pytest.approx(clip_s, abs=1e-5)
    assert got.per_image_ref == pytest.approx(ref_clip_s, abs=1e-5)
    assert got.clip_score == pytest.approx(sum(clip_s) / 3, abs=1e-5)
    assert got.refclip_score == pytest.approx(sum(ref_clip_s) / 3, abs=1e-5)
    assert any(s > 0 for s in clip_s)  # the figures are not all the clamped 0

    without = scorer.score(images(), CAPTIONS)
    assert without.refclip_score is None and without.per_image == pytest.approx(clip_s, abs=1e-5)


def test_rerank_picks_each_images_best_clip_score(clip_dir):
    scorer = CLIPScorer(str(clip_dir))
    independent = Independent(clip_dir, scorer)
    candidates = [[c, *r] for c, r in zip(CAPTIONS, REFERENCES)]
    chosen = scorer.rerank(images(), candidates)
    for image, group, k in zip(images(), candidates, chosen):
        scores = [independent.clip_s(image, text) for text in group]
        assert k == scores.index(max(scores))  # the first of equal maxima


def test_mismatched_inputs_are_refused(clip_dir):
    scorer = CLIPScorer(str(clip_dir))
    with pytest.raises(ValueError, match="2 images for 3 captions"):
        scorer.score(images()[:2], CAPTIONS)
    with pytest.raises(ValueError, match="at least one reference"):
        scorer.score(images(), CAPTIONS, [["x"], [], ["y"]])


def test_eval_reports_clip_scores(clip_dir, tiny_model, tmp_path, capsys):
    dataset = make_colour_dataset(tmp_path / "colours")
    model_dir = tiny_model.save_pretrained(tmp_path / "model")
    arguments = ["eval", "--model", str(model_dir), "--data", str(dataset), "--json"]
    arguments += ["--cache-dir", str(tmp_path / "cache")]
    arguments += ["--predictions", str(tmp_path / "predictions.jsonl")]
    assert main([*arguments, "--clip", str(clip_dir)]) == 0
    scores = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    lines = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    images = [dataset / "images" / f"{line['image_id']}.png" for line in lines]
    expected = CLIPScorer(str(clip_dir)).score(
        images, [line["caption"] for line in lines], [line["references"] for line in lines]
    )
    assert scores["clip_score"] == pytest.approx(expected.clip_score, abs=1e-6)
    assert scores["refclip_score"] == pytest.approx(expected.refclip_score, abs=1e-6)
    assert "cider" in scores and scores["images"] == 4

    # re-ranked by CLIP-S, each image's CLIP-S can only rise: its top beam was a candidate
    assert main([*arguments, "--num-beams", "3", "--clip", str(clip_dir), "--clip-rerank"]) == 0
    scores = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    reranked = scores["clip_reranked"]
    assert reranked["clip_score"] >= scores["clip_score"] - 1e-6
    assert {"cider", "bleu4", "refclip_score"} <= set(reranked) and 0 <= reranked["changed"] <= 4
    for extra, message in [
        (["--clip-rerank"], "--clip-rerank needs --clip MODEL"),
        (["--clip", str(clip_dir), "--clip-rerank", "--num-beams", "1"], "a beam of 2 or more"),
    ]:
        assert main([*arguments, *extra]) == 2
        assert message in capsys.readouterr().err

    capsys.readouterr()
    code = main([*arguments, "--clip", str(tmp_path / "no-such-clip")])
    assert code == 2
    error = capsys.readouterr().err.strip()
    assert (
        "--clip" in error and "cannot load a CLIP model" in error and len(error.splitlines()) == 1
    )
