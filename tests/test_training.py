"""Training end to end on a tiny generated dataset: cache, resume, export, DDP on CPU."""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from PIL import Image
from safetensors.torch import load_file
from training_data import TerminateAtStep, make_colour_dataset, tiny_config

from captioner.batch import CaptionCollator
from captioner.cli import main
from captioner.config import CaptionerConfig, DecoderConfig, EncoderConfig
from captioner.data import CaptionRecord, load_records
from captioner.decoding import Hypothesis
from captioner.encoders import build_encoder
from captioner.evaluation.metrics import caption_metrics
from captioner.features import build_cache, cache_dir, image_source, record_key
from captioner.objective import teacher_forced
from captioner.tokenizer import CaptionTokenizer
from captioner.torch_model import CaptionModel
from captioner.training.config import TrainConfig, preset
from captioner.training.data import (
    CROP_VIEWS,
    CaptionSampler,
    LengthBucketBatches,
    TrainCaptions,
    mirror_caption,
)
from captioner.training.run import (
    TrainingSetupError,
    extract_features,
    extraction_device,
    train,
)
from captioner.training.scst import CiderD, SelfCriticalModule, sampled_log_probs
from captioner.transforms import CENTRE


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_colour_dataset(tmp_path_factory.mktemp("colours"))


def test_training_exports_a_loadable_best_model(dataset, tmp_path):
    best = train(tiny_config(dataset, tmp_path, epochs=3), progress=False)
    model = CaptionModel.from_pretrained(best)
    metrics = model.config.metadata["dev_metrics"]
    assert {"cider", "bleu4", "token_acc", "loss"} <= set(metrics)
    assert model.config.encoder.name == "efficientnet-lite0"
    # The whole training config is saved beside, and inside the Lightning checkpoint.
    saved = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert TrainConfig.from_dict(saved).epochs == 3
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["hyper_parameters"]["train"]["epochs"] == 3
    assert not any(k.startswith("model.encoder.") for k in checkpoint["state_dict"])
    text = model.caption(Image.new("RGB", (40, 40), (220, 30, 30)), num_beams=2)[0].text
    assert text  # the caption itself is not checked: 3 epochs of 12 images is no real training
    logs = list((tmp_path / "run" / "logs").rglob("metrics.csv"))
    assert logs and "val/cider" in logs[0].read_text().splitlines()[0]


class StopAfterFirstEpoch(Callback):
    """Stands in for a run stopped after its first epoch's checkpoint."""

    def on_train_epoch_end(self, trainer, module):
        trainer.should_stop = True


class Killed(Exception):
    pass


class KillAtStep(Callback):
    """Stands in for a run killed at a step: everything after its last checkpoint is lost."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *_):
        if trainer.global_step == self.step:
            raise Killed


def _assert_same_weights(run_a, run_b):
    """The raw weights and the weight average of two runs' last checkpoints, bit for bit."""
    last_a = torch.load(run_a / "checkpoints" / "last.ckpt", weights_only=True)
    last_b = torch.load(run_b / "checkpoints" / "last.ckpt", weights_only=True)
    assert last_a["global_step"] == last_b["global_step"]
    average_a = last_a["callbacks"]["DecoderAverage"]["average"]
    average_b = last_b["callbacks"]["DecoderAverage"]["average"]
    for weights_a, weights_b in (
        (last_a["state_dict"], last_b["state_dict"]),
        (average_a, average_b),
    ):
        assert weights_a.keys() == weights_b.keys()
        for key in weights_a:
            assert torch.equal(weights_a[key], weights_b[key]), key


def test_resume_continues_exactly_with_dropout(dataset, tmp_path):
    """With the preset's dropout and the weight average on, a run stopped after an epoch,
    killed mid-epoch (checkpoints every 2 steps, 3 steps an epoch), or sent SIGTERM mid-epoch,
    and resumed ends with the very weights of the uninterrupted run."""

    def config(name):
        return tiny_config(
            dataset,
            tmp_path / name,
            early_stopping_patience=9,
            average_decay=0.9,
            decoder={"dropout": 0.25},
            checkpoint_every_steps=2,
        )

    straight = train(config("straight"), progress=False).parent
    stopped = config("stopped")
    train(stopped, progress=False, callbacks=[StopAfterFirstEpoch()])
    train(stopped, resume=True, progress=False)
    _assert_same_weights(straight, tmp_path / "stopped" / "run")

    killed = config("killed")
    with pytest.raises(Killed):  # at step 3; the last checkpoint is step 2's, mid epoch 0
        train(killed, progress=False, callbacks=[KillAtStep(3)])
    last = torch.load(tmp_path / "killed" / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 2 and last["epoch"] == 0
    train(killed, resume=True, progress=False)
    _assert_same_weights(straight, tmp_path / "killed" / "run")

    terminated = config("terminated")
    with pytest.raises(SystemExit):  # Lightning's SIGTERMException, before step 2
        train(terminated, progress=False, callbacks=[TerminateAtStep(1)])
    last = torch.load(
        tmp_path / "terminated" / "run" / "checkpoints" / "last.ckpt", weights_only=True
    )
    assert last["global_step"] == 1 and last["epoch"] == 0  # written at the step SIGTERM came
    train(terminated, resume=True, progress=False)
    _assert_same_weights(straight, tmp_path / "terminated" / "run")


class FlatCider(Callback):
    """Dev CIDEr-D that never beats the first validation's, so early stopping ends the run."""

    def on_validation_end(self, trainer, *_):
        trainer.callback_metrics["val/cider"] = torch.tensor(0.5)


def test_a_run_early_stopping_ended_trains_no_more_when_resumed(dataset, tmp_path):
    config = tiny_config(dataset, tmp_path, epochs=6, early_stopping_patience=1)
    train(config, progress=False, callbacks=[FlatCider()])
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    stopped = torch.load(last, weights_only=True)
    assert stopped["epoch"] == 1  # no better than epoch 0 at epoch 1: stopped there, of 6
    train(config, resume=True, progress=False)
    assert torch.load(last, weights_only=True)["global_step"] == stopped["global_step"]


def test_a_checkpoint_every_few_minutes_within_an_epoch(dataset, tmp_path):
    config = tiny_config(dataset, tmp_path, epochs=1, checkpoint_every_minutes=1e-9)
    with pytest.raises(Killed):
        train(config, progress=False, callbacks=[KillAtStep(2)])
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 1  # written after step 1, before the kill at step 2


def test_the_same_seed_gives_the_same_model_whether_or_not_the_cache_was_built(dataset, tmp_path):
    """Feature extraction must not move the random state the model is initialised from."""
    cold = tiny_config(dataset, tmp_path / "cold", epochs=1, cache_dir=str(tmp_path / "cache"))
    warm = tiny_config(dataset, tmp_path / "warm", epochs=1, cache_dir=str(tmp_path / "cache"))
    train(cold, progress=False)  # encodes every image
    train(warm, progress=False)  # finds them all cached
    first = torch.load(tmp_path / "cold" / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    second = torch.load(tmp_path / "warm" / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    for key, value in first["state_dict"].items():
        assert torch.equal(value, second["state_dict"][key]), key


def test_the_exported_model_is_the_weight_average(dataset, tmp_path):
    best = train(tiny_config(dataset, tmp_path, epochs=1, average_decay=0.5), progress=False)
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    average = checkpoint["callbacks"]["DecoderAverage"]["average"]
    raw = checkpoint["state_dict"]
    assert int(average["n_averaged"]) == 3  # one update per step: 12 images, 4 per step
    exported = CaptionModel.from_pretrained(best).decoder.state_dict()
    moved = 0
    for key, value in exported.items():
        torch.testing.assert_close(value, average[f"module.{key}"], msg=key)
        moved += not torch.equal(value, raw[f"model.decoder.{key}"])
    assert moved  # and not the raw weights of the last step


def test_trained_encoder_blocks_train_slower_resume_exactly_and_reload(dataset, tmp_path):
    """encoder.trained_blocks=1: the decoder's copy of Lite0's last block and head trains from
    cached grids of the block before, in optimiser groups of their own at encoder_lr_scale
    times the learning rate; it is averaged and checkpointed with the decoder (a run stopped
    after an epoch and resumed ends with the uninterrupted run's weights), and the exported
    model holds it: reloaded and saved again, the same weights and captions."""
    from captioner.encoders.efficientnet import EfficientNetLiteEncoder

    def config(name):
        return tiny_config(
            dataset,
            tmp_path / name,
            encoder={"trained_blocks": 1},
            average_decay=0.5,
            early_stopping_patience=9,
        )

    best = train(config("straight"), progress=False)
    run = tmp_path / "straight" / "run"
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    state = last["state_dict"]
    top_keys = [k for k in state if k.startswith("model.decoder.image_stage.")]
    assert top_keys and not any(k.startswith("model.encoder.") for k in state)
    groups = last["optimizer_states"][0]["param_groups"]
    learning_rate = TrainConfig.from_dict(last["hyper_parameters"]["train"]).learning_rate
    slow = [g for g in groups if g["initial_lr"] == pytest.approx(learning_rate * 0.1)]
    fast = [g for g in groups if g["initial_lr"] == pytest.approx(learning_rate)]
    assert len(slow) + len(fast) == len(groups) and slow and fast
    assert sum(len(g["params"]) for g in slow) == len(top_keys)  # the top, and only the top
    assert {g["weight_decay"] for g in slow} == {0.0, 0.01}  # its biases are not decayed
    pretrained = EfficientNetLiteEncoder("efficientnet-lite0", trained_blocks=1).trainable_top()
    start = pretrained.state_dict()
    assert start.keys() == {k.removeprefix("model.decoder.image_stage.") for k in top_keys}
    trained = {k: state[f"model.decoder.image_stage.{k}"] for k in start}
    assert all(not torch.equal(trained[k], v) for k, v in start.items())
    average = last["callbacks"]["DecoderAverage"]["average"]
    assert any(not torch.equal(average[f"module.image_stage.{k}"], v) for k, v in trained.items())

    stopped = config("stopped")
    train(stopped, progress=False, callbacks=[StopAfterFirstEpoch()])
    train(stopped, resume=True, progress=False)
    _assert_same_weights(run, tmp_path / "stopped" / "run")

    model = CaptionModel.from_pretrained(best)
    assert model.config.encoder.trained_blocks == 1 and model.config.decoder.image_dim == 192
    exported = model.decoder.image_stage.state_dict()
    assert all(not torch.equal(exported[k], v) for k, v in start.items())  # not refilled
    again = CaptionModel.from_pretrained(model.save_pretrained(tmp_path / "again"))
    for key, value in model.decoder.state_dict().items():
        assert torch.equal(value, again.decoder.state_dict()[key]), key
    image = Image.new("RGB", (40, 40), (220, 30, 30))
    features = model.encoder(model.encoder.preprocess.batch([image])).tokens
    ids = torch.tensor([[model.special.start, 5, 6]])
    with torch.inference_mode():
        torch.testing.assert_close(again(features, ids), model(features, ids), rtol=0, atol=0)
    assert again.caption(image)[0].token_ids == model.caption(image)[0].token_ids


def test_progress_reaches_a_log_file(dataset, tmp_path, capsys):
    """Under nohup or SLURM stdout is a file, where Lightning's Rich bar prints only the final
    state when training ends; every epoch must show up as it runs."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(tiny_config(dataset, tmp_path, epochs=2, early_stopping_patience=9), progress=True)
    # 3 batches an epoch: Lightning's advice to log more often than every 20 steps is noise.
    assert not [w for w in caught if "logging interval" in str(w.message)]
    printed = capsys.readouterr()
    text = printed.out + printed.err
    assert "Epoch 0" in text and "Epoch 1" in text and "train/loss" in text
    # Lightning's advice that does not apply: the frozen encoder is in eval mode on purpose.
    assert "module(s) in eval mode" not in text and "Tip:" not in text and "LeafSpec" not in text


def test_a_nested_override_keeps_the_other_fields():
    """`--set validation_generation.num_beams=3` must not reset the validation length (25 in
    TrainConfig) to GenerationConfig's own default (30)."""
    config = preset("flickr8k-effnet", validation_generation={"num_beams": 3})
    assert config.validation_generation.num_beams == 3
    assert config.validation_generation.max_new_tokens == 25
    scst = preset("flickr8k-effnet-scst", decoder={"dropout": 0.0})
    assert scst.decoder.dropout == 0.0 and scst.decoder.n_layers == 3  # the preset's layers
    with pytest.raises(ValueError, match="unknown preset"):
        preset("flickr9k")


def test_resume_without_a_checkpoint_is_refused(dataset, tmp_path):
    with pytest.raises(TrainingSetupError, match="nothing to resume"):
        train(tiny_config(dataset, tmp_path), resume=True, progress=False)
    assert not (tmp_path / "run").exists()


def test_a_dataset_without_readable_images_is_refused_and_exports_nothing(tmp_path):
    (tmp_path / "data").mkdir()
    lines = [
        {"image": f"images/{i}.png", "image_id": str(i), "split": split, "captions": ["a cat"]}
        for i, split in enumerate(["train", "train", "dev"])
    ]
    (tmp_path / "data" / "captions.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    config = tiny_config(tmp_path / "data", tmp_path, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(TrainingSetupError, match="none of the 3 image files exist"):
        train(config, progress=False)
    (tmp_path / "data" / "images").mkdir()
    for i in range(3):  # there, but not images
        (tmp_path / "data" / "images" / f"{i}.png").write_bytes(b"not a png")
    with pytest.raises(TrainingSetupError, match="none of the 2 images of split 'train'"):
        train(config, progress=False)
    assert not (tmp_path / "run").exists()


def test_feature_cache_reuse_and_invalidation(dataset, tmp_path):
    records = load_records(dataset)
    sources = [image_source(r) for r in records]
    lite0 = build_encoder(EncoderConfig("efficientnet-lite0"))
    cache = build_cache(lite0, sources, tmp_path, progress=False)
    assert len(cache) == 16 and cache.failed == ["broken"]
    assert cache.array.dtype == np.float16 and cache.array.shape[1:] == (49, 1280)
    first = np.array(cache[next(iter(cache.rows))])
    # A second build encodes nothing (the encoder is not even called).
    calls = []
    lite0.register_forward_hook(lambda *a: calls.append(1))
    again = build_cache(lite0, sources, tmp_path, progress=False)
    assert calls == [] and np.array_equal(again[next(iter(again.rows))], first)
    # A touched (or copied) file is still the same image: nothing is re-encoded.
    os.utime(dataset / "images" / "1.png", ns=(1, 1))
    assert len(build_cache(lite0, sources, tmp_path, progress=False)) == 16 and calls == []
    # A changed image is re-encoded, the others reused.
    Image.new("RGB", (40, 40), (0, 0, 0)).save(dataset / "images" / "0.png")
    changed = build_cache(lite0, sources, tmp_path, progress=False)
    assert len(calls) == 1 and len(changed) == 17  # one new row beside the stale one
    # Another encoder (or other preprocessing) gets its own cache folder.
    lite2 = build_encoder(EncoderConfig("efficientnet-lite2"))
    assert cache_dir(tmp_path, lite2) != cache_dir(tmp_path, lite0)
    assert build_cache(lite2, sources[:2], tmp_path, progress=False).array.shape[1:] == (81, 1280)


def test_features_are_extracted_on_the_gpu_each_process_trains_on(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert extraction_device(TrainConfig()) == torch.device("cuda", 0)
    monkeypatch.setenv("LOCAL_RANK", "3")  # more processes than GPUs: they share them in turn
    assert extraction_device(TrainConfig(accelerator="gpu")) == torch.device("cuda", 1)
    assert extraction_device(TrainConfig(accelerator="cpu")) == torch.device("cpu")
    monkeypatch.setenv("LOCAL_RANK", "first")  # not a launcher's: the first GPU, not a crash
    assert extraction_device(TrainConfig()) == torch.device("cuda", 0)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert extraction_device(TrainConfig(devices=2)) == torch.device("cuda", 1)  # a count
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)  # `devices` naming GPUs:
    assert extraction_device(TrainConfig(devices="2,3")) == torch.device("cuda", 3)  # the 2nd
    assert extraction_device(TrainConfig(devices=" 1 , ")) == torch.device("cuda", 1)
    with pytest.raises(TrainingSetupError, match=r"names GPU 4, but this machine has 4 \(0 to 3\)"):
        extraction_device(TrainConfig(devices="2,4"))  # one line, before torch's own error
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert extraction_device(TrainConfig(accelerator="auto")) == torch.device("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_cache_built_on_the_gpu_holds_the_cpus_grids(dataset, tmp_path):
    from tiny_clip import save_tiny_clip

    clip = EncoderConfig("clip", source=str(save_tiny_clip(tmp_path / "clip")))
    sources = [image_source(r) for r in load_records(dataset)]
    on_cpu = build_cache(build_encoder(clip), sources, tmp_path / "a", progress=False)
    on_gpu = build_cache(build_encoder(clip).to("cuda"), sources, tmp_path / "b", progress=False)
    assert list(on_gpu.rows) == list(on_cpu.rows) and on_gpu.failed == on_cpu.failed
    difference = np.abs(on_gpu.array.astype(np.float32) - on_cpu.array.astype(np.float32))
    assert difference.max() < 0.01  # fp16 grids of values of a few units


def test_sampler_random_caption_per_image_and_all(dataset):
    records = load_records(dataset, "train")[:4]
    data = TrainCaptions(records, cache=None)
    one = CaptionSampler(data, "random", seed=1)
    picked = list(one)
    assert len(picked) == len(one) == 4
    assert sorted(image for image, _, _, _ in picked) == [0, 1, 2, 3]  # each image once
    assert all(len(captions) == 1 for _, captions, _, _ in picked)
    assert picked == list(one)  # a pure function of (seed, epoch)
    seen = set()
    for epoch in range(40):
        one.set_epoch(epoch)
        seen |= {(image, captions[0]) for image, captions, _, _ in one}
    assert len(seen) == 12  # over epochs every caption of every image comes up
    everything = CaptionSampler(data, "all", seed=1)
    assert sorted(everything) == [(i, (0, 1, 2), False, CENTRE) for i in range(4)]


def test_sampler_mirrors_each_image_in_about_half_the_epochs(dataset):
    data = TrainCaptions(load_records(dataset, "train")[:4], cache=None)
    sampler = CaptionSampler(data, "all", seed=3, mirror=True)
    mirrored = []
    for epoch in range(200):
        sampler.set_epoch(epoch)
        mirrored += [(image, flag) for image, _, flag, _ in sampler]
    for image in range(4):
        share = sum(flag for i, flag in mirrored if i == image) / 200
        assert 0.4 < share < 0.6
    sampler.set_epoch(7)
    assert list(sampler) == list(sampler)  # still a pure function of (seed, epoch)


def test_sampler_sees_each_image_through_each_crop_view_in_about_a_third_of_the_epochs(dataset):
    data = TrainCaptions(load_records(dataset, "train")[:4], cache=None)
    cropped = CaptionSampler(data, "random", seed=3, mirror=True, corner_crops=True)
    plain = CaptionSampler(data, "random", seed=3, mirror=True)
    views = []
    for epoch in range(300):
        cropped.set_epoch(epoch)
        plain.set_epoch(epoch)
        items = list(cropped)
        # the same images, captions and mirroring as without corner crops: only the view differs
        assert [key[:3] for key in items] == [key[:3] for key in plain]
        assert {key[3] for key in plain} == {CENTRE}
        views += [(image, view) for image, _, _, view in items]
    for image in range(4):
        for view in CROP_VIEWS:
            share = sum(v == view for i, v in views if i == image) / 300
            assert 0.25 < share < 0.42


def test_mirror_caption_swaps_sides_only():
    assert mirror_caption("A dog on the left, a cat to the Right") == (
        "A dog on the right, a cat to the Left"
    )
    assert mirror_caption("LEFT turn; leftover bright paint") == "RIGHT turn; leftover bright paint"


def test_mirrored_grid_is_the_mirrored_image_grid(tmp_path):
    """A mirrored source is encoded from the flipped pixels: its grid is the grid of an image
    file that holds the mirror image, and a training item reads it with sides swapped."""
    pixels = np.zeros((60, 90, 3), np.uint8)
    pixels[:, :30] = (250, 20, 20)  # red on the left, noise elsewhere
    pixels[:, 30:] = np.random.default_rng(0).integers(0, 255, (60, 60, 3))
    Image.fromarray(pixels).save(tmp_path / "photo.png")
    Image.fromarray(pixels[:, ::-1].copy()).save(tmp_path / "flipped.png")
    record = CaptionRecord("photo", str(tmp_path / "photo.png"), ["red on the left"], "train")
    flipped = CaptionRecord("flipped", str(tmp_path / "flipped.png"), ["x"], "train")
    lite0 = build_encoder(EncoderConfig("efficientnet-lite0"))
    sources = [image_source(record), image_source(record, mirrored=True), image_source(flipped)]
    cache = build_cache(lite0, sources, tmp_path / "cache", progress=False)
    assert len(cache) == 3
    data = TrainCaptions([record, flipped], cache)
    plain, as_seen = data[(0, (0,), False, CENTRE)], data[(0, (0,), True, CENTRE)]
    assert as_seen[1] == ["red on the right"] and plain[1] == ["red on the left"]
    assert torch.allclose(as_seen[0].float(), data[(1, (0,), False, CENTRE)][0].float(), atol=0.02)
    assert not torch.allclose(as_seen[0].float(), plain[0].float(), atol=0.1)


def test_mirroring_encodes_the_training_images_twice(dataset, tmp_path):
    config = tiny_config(
        dataset, tmp_path, mirror_images=True, corner_crops=False, cache_dir=str(tmp_path / "c")
    )
    cache, records = extract_features(config, ["train", "dev"], progress=False)
    assert len(records["train"]) == 12 and len(records["dev"]) == 4
    assert len(cache) == 12 * 2 + 4  # dev is never mirrored


def test_corner_crops_encode_each_training_image_through_every_view(dataset, tmp_path):
    """With mirroring, 2 x 3 grids per training image (dev is seen as at caption time only),
    each the encoder's grid of the square its view cuts (`test_transforms` checks the squares)."""
    config = tiny_config(
        dataset, tmp_path, mirror_images=True, corner_crops=True, cache_dir=str(tmp_path / "c")
    )
    cache, records = extract_features(config, ["train", "dev"], progress=False)
    assert len(cache) == 12 * 6 + 4
    y, x = np.mgrid[0:60, 0:90]  # a photo whose corners differ (the dataset's are flat colours)
    pixels = np.stack([x * 2.8, y * 4.2, (x * y) % 255], axis=-1).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "photo.png")
    record = CaptionRecord("photo", str(tmp_path / "photo.png"), ["a photo"], "train")
    views = [(mirrored, view) for mirrored in (False, True) for view in CROP_VIEWS]
    encoder = build_encoder(config.encoder)
    sources = [image_source(record, mirrored, view) for mirrored, view in views]
    data = TrainCaptions([record], build_cache(encoder, sources, tmp_path / "c", progress=False))
    grids = {}
    for mirrored, view in views:
        prepared = encoder.preprocess.prepare(record.image, mirrored=mirrored, view=view).pixels
        with torch.no_grad():
            expected = encoder(torch.from_numpy(prepared)[None]).tokens[0]
        grids[mirrored, view] = data[(0, (0,), mirrored, view)][0].float()
        assert torch.allclose(grids[mirrored, view], expected, atol=0.02)  # fp16 rows
    for one, other in zip(views, views[1:], strict=False):
        assert not torch.allclose(grids[one], grids[other], atol=0.1)  # six different squares
    keys = {record_key(record, mirrored, view) for mirrored, view in views}
    assert len(keys) == 6 and record_key(record) == record_key(record, False, CENTRE)


def test_length_buckets_cover_every_item_once_and_group_lengths():
    records = [
        CaptionRecord(str(i), f"{i}.png", ["word " * (1 + i % 7)] * 2, "train") for i in range(40)
    ]
    data = TrainCaptions(records, cache=None)
    sampler = CaptionSampler(data, "random", seed=0)
    buckets = LengthBucketBatches(sampler, data, batch_size=4, window=5)
    batches = list(buckets)
    assert len(batches) == len(buckets) == 10
    assert sorted(image for batch in batches for image, _, _, _ in batch) == list(range(40))
    spread = sum(
        max(buckets._length(k) for k in b) - min(buckets._length(k) for k in b) for b in batches
    )
    sampler.set_epoch(0)
    unsorted = list(sampler)
    plain = sum(
        max(buckets._length(k) for k in unsorted[i : i + 4])
        - min(buckets._length(k) for k in unsorted[i : i + 4])
        for i in range(0, 40, 4)
    )
    assert spread < plain / 2
    sampler.set_epoch(1)
    assert list(buckets) != batches  # a new epoch, a new order


def test_batches_share_each_image_among_its_captions(dataset, tmp_path):
    records = load_records(dataset, "train")[:3]
    cache = build_cache(
        build_encoder(EncoderConfig("efficientnet-lite0")),
        [image_source(r) for r in records],
        tmp_path,
        progress=False,
    )
    data = TrainCaptions(records, cache)
    collator = CaptionCollator(CaptionTokenizer(), max_length=12)
    batch = collator([data[(0, (0, 1, 2), False, CENTRE)], data[(2, (1,), False, CENTRE)]])
    assert batch.features.shape == (2, 49, 1280)
    assert batch.image_index.tolist() == [0, 0, 0, 1]
    assert batch.ids.shape[0] == 4 and batch.ids[3, 0] == collator.tokenizer.start_id
    assert collator.tokenizer.decode(batch.ids[3]) == records[2].captions[1].lower()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
def test_ddp_on_two_cpu_processes(dataset, tmp_path):
    out = tmp_path / "ddp"
    overrides = {
        "output_dir": str(out),
        "cache_dir": str(tmp_path / "cache"),
        "encoder.name": "efficientnet-lite0",
        "decoder.d_model": 32,
        "decoder.n_heads": 2,
        "decoder.n_layers": 1,
        "decoder.max_length": 12,
        "validation_generation.max_new_tokens": 11,
        "epochs": 1,
        "batch_size": 2,
        "accelerator": "cpu",
        "devices": 2,
        "strategy": "ddp",
        "min_token_count": 1,
    }
    args = [sys.executable, "-m", "captioner", "train", "--data", str(dataset)]
    for key, value in overrides.items():
        args += ["--set", f"{key}={json.dumps(value) if not isinstance(value, str) else value}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in done.stderr + done.stdout
    assert done.stdout.count("best model:") == 1  # said once, by the first process
    weights = load_file(out / "best" / "model.safetensors")
    assert weights  # rank 0 exported the model


def test_wandb_offline_logs_the_run_and_the_model_artifact(dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    best = train(tiny_config(dataset, tmp_path, epochs=1, wandb=True), progress=False)
    runs = list(tmp_path.rglob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    assert (best / "model.safetensors").is_file()


def test_eval_command_prints_every_metric(dataset, tmp_path, capsys):
    best = train(tiny_config(dataset, tmp_path, epochs=1), progress=False)
    predictions = tmp_path / "predictions.jsonl"
    code = main(
        [
            "eval",
            "--model",
            str(best),
            "--data",
            str(dataset),
            "--split",
            "dev",
            "--num-beams",
            "2",
            "--json",
            "--predictions",
            str(predictions),
            "--cache-dir",
            str(tmp_path / "cache"),
        ]
    )
    assert code == 0
    scores = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(scores) == {
        "bleu1",
        "bleu2",
        "bleu3",
        "bleu4",
        "meteor",
        "rouge_l",
        "cider",
        "token_accuracy",
        "images",
        "seconds",
    }
    assert scores["images"] == 4 and 0 <= scores["token_accuracy"] <= 1
    lines = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert {line["image_id"] for line in lines} == {"12", "13", "14", "15"}
    assert all(len(line["references"]) == 3 for line in lines)


def test_cider_d_reward_matches_coco_caption_on_the_same_corpus():
    references = {
        "1": ["a dog runs on the grass", "a brown dog is running", "dog running outside"],
        "2": ["two kids play in water", "children splash in a pool", "two children swimming"],
        "3": ["a man rides a bike", "a cyclist on a road", "a man riding his bicycle"],
    }
    predictions = {
        "1": "a dog is running on grass",
        "2": "two kids in a pool",
        "3": "a man on a bike",
    }
    reward = CiderD(references.values())
    mean = sum(reward.scores([predictions[k]], references[k])[0] for k in references) / 3
    assert mean == pytest.approx(caption_metrics(predictions, references, meteor=False)["cider"])
    # A caption equal to a reference beats a fragment of it; an unrelated one scores zero.
    close, fragment, unrelated = reward.scores(
        ["a dog runs on the grass", "a dog", "purple elephants fly"], references["1"]
    )
    assert close > fragment > unrelated == 0.0


def test_cider_d_reward_with_the_end_word_scores_where_a_caption_ends():
    references = ["a dog runs on the grass", "a brown dog runs on the grass", "a dog on grass"]
    corpus = [references, ["two kids play in the water"], ["a man rides a bike on the road"]]
    plain, with_end = CiderD(corpus), CiderD(corpus, end_word=True)
    caption = "a dog runs on the grass"
    # Without the end word, whether the caption ended or was cut off is not seen.
    assert len(set(plain.scores([caption, caption], references, [True, False]))) == 1
    ended, cut_off = with_end.scores([caption, caption], references, [True, False])
    assert ended > cut_off > 0
    # A caption that stops mid-phrase loses the "the grass <eos>" n-grams a full one earns.
    full, trailing = with_end.scores([caption, "a dog runs on the"], references)
    assert full > trailing
    with pytest.raises(ValueError):  # one `ended` flag a candidate
        with_end.scores([caption, caption], references, [True])


def _self_critical_config(dataset, tmp_path, first: Path, **overrides) -> TrainConfig:
    """A tiny self-critical run fine-tuning the model exported to `first`."""
    return tiny_config(
        dataset, tmp_path, objective="scst", init_from=str(first), scst_samples=3, **overrides
    )


def test_self_critical_fine_tuning_from_a_trained_model(dataset, tmp_path):
    first = train(tiny_config(dataset, tmp_path / "xe", epochs=1), progress=False)
    best = train(_self_critical_config(dataset, tmp_path / "scst", first, epochs=1), progress=False)
    tuned = CaptionModel.from_pretrained(best)
    # Sampling is seeded by step: a rerun draws the same captions and ends with the same weights.
    again = _self_critical_config(dataset, tmp_path / "again", first, epochs=1)
    rerun = CaptionModel.from_pretrained(train(again, progress=False)).decoder.state_dict()
    for key, value in tuned.decoder.state_dict().items():
        torch.testing.assert_close(value, rerun[key], msg=key)
    assert tuned.tokenizer.vocab == CaptionModel.from_pretrained(first).tokenizer.vocab
    before = CaptionModel.from_pretrained(first).decoder.state_dict()
    after = tuned.decoder.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # it did learn something
    with pytest.raises(ValueError, match="needs init_from"):
        tiny_config(dataset, tmp_path / "bad", objective="scst")


def test_a_fine_tuning_run_stopped_early_does_not_show_its_start_models_scores(dataset, tmp_path):
    first = train(tiny_config(dataset, tmp_path / "xe", epochs=1), progress=False)
    assert "evaluation" in json.loads((first / "config.json").read_text())["metadata"]
    scst = _self_critical_config(dataset, tmp_path / "scst", first, steps_per_epoch=2)
    with pytest.raises(Killed):  # after epoch 0 exported best/, before the run's own evaluation
        train(scst, progress=False, callbacks=[KillAtStep(3)])
    best = Path(scst.output_dir) / "best"
    metadata = json.loads((best / "config.json").read_text())["metadata"]
    assert "evaluation" not in metadata and metadata["epoch"] == 0
    assert "decoded as the model decodes by default" not in (best / "README.md").read_text()


SCST_CAPTIONS = [["a dog runs on the grass", "a brown dog"], ["two kids swim", "a pool"]]


def _self_critical_loss(model: CaptionModel, batch, **settings) -> torch.Tensor:
    module = SelfCriticalModule(model, TrainConfig(scst_samples=3, **settings), SCST_CAPTIONS)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log with no Trainer attached
        return module.training_step(batch, 0)


def _tiny_self_critical_setup(dropout: float):
    torch.manual_seed(0)
    tokenizer = CaptionTokenizer.build_compact(c for group in SCST_CAPTIONS for c in group)
    config = CaptionerConfig(
        encoder=EncoderConfig("efficientnet-lite0"),
        decoder=DecoderConfig(n_layers=1, d_model=32, n_heads=2, dropout=dropout, max_length=16),
    )
    model = CaptionModel(config, tokenizer)
    batch = CaptionCollator(tokenizer, 16).tokenize(torch.randn(2, 49, 1280), SCST_CAPTIONS)
    return model, batch


def test_self_critical_step_scores_its_samples_without_dropout():
    """The policy gradient needs the log-probabilities of the policy that drew the samples, so
    dropout stays off in the update too: the same seeded step gives the same loss twice."""
    model, batch = _tiny_self_critical_setup(dropout=0.5)
    model.train()
    first, second = (_self_critical_loss(model, batch) for _ in range(2))
    assert first != 0.0
    torch.testing.assert_close(first, second)


def test_a_self_critical_step_builds_each_images_memory_once_for_all_its_samples(monkeypatch):
    """The image stage may hold trained encoder blocks: sampling runs it on the batch's 2
    images, not on 2 x scst_samples copies (the update's teacher-forced pass does it once too)."""
    model, batch = _tiny_self_critical_setup(dropout=0.0)
    encode_image, sizes = model.decoder.encode_image, []

    def counted(features):
        sizes.append(features.shape[0])
        return encode_image(features)

    monkeypatch.setattr(model.decoder, "encode_image", counted)
    _self_critical_loss(model, batch)
    assert sizes and set(sizes) == {2}


def test_the_end_word_changes_the_self_critical_rewards_of_the_same_samples():
    model, batch = _tiny_self_critical_setup(dropout=0.0)
    plain = _self_critical_loss(model, batch)
    with_end = _self_critical_loss(model, batch, scst_reward_end_word=True)
    assert plain != with_end  # the same seeded samples, scored with the end as a word


def test_a_sample_cut_off_at_the_length_limit_is_scored_without_an_end_token():
    model, batch = _tiny_self_critical_setup(dropout=0.0)
    model.eval()
    a, b = (model.tokenizer.encode(word)[1] for word in ("dog", "pool"))
    start, end = model.tokenizer.start_id, model.tokenizer.end_id
    cut_off, ended = Hypothesis([a, b], 0.0), Hypothesis([a], 0.0)
    image_index = torch.tensor([0, 0])
    scored = sampled_log_probs(model, batch.features, image_index, [cut_off, ended], limit=2)
    with torch.no_grad():
        logits = model(batch.features[:1], torch.tensor([[start, a, b]]), torch.tensor([0]))
    steps = logits[0].float().log_softmax(-1)  # after start, after "dog", after "dog pool"
    expected = torch.stack([steps[0, a] + steps[1, b], steps[0, a] + steps[1, end]])
    torch.testing.assert_close(scored.detach(), expected)


def test_self_critical_loss_mixes_in_the_references_cross_entropy():
    """`scst_xe_weight` adds exactly that multiple of the references' teacher-forced
    cross-entropy (no label smoothing) to the self-critical loss of the same samples."""
    model, batch = _tiny_self_critical_setup(dropout=0.0)
    losses = {
        weight: _self_critical_loss(model, batch, label_smoothing=0.1, scst_xe_weight=weight)
        for weight in (0.0, 0.5)
    }
    cross_entropy, _, _ = teacher_forced(model, batch)
    assert cross_entropy > 0.1
    torch.testing.assert_close(losses[0.5] - losses[0.0], 0.5 * cross_entropy)
