"""`captioner train`, `features` and `eval` at the boundary: typed --set values, ranges, resume
from a run's saved config, and one-line errors (exit code 2) instead of tracebacks."""

import argparse
import json
import subprocess
import sys

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from training_data import TINY_SETTINGS, TerminateAtStep, make_colour_dataset, tiny_config

from captioner.cli import build_parser, main
from captioner.cli.features import encoder_config
from captioner.cli.train import training_config
from captioner.config import CaptionerConfig, DecoderConfig, EncoderConfig, parse_settings
from captioner.encoders import build_encoder
from captioner.features import FeatureCache, cache_dir
from captioner.training.config import DEFAULT_PRESET, PRESETS, TrainConfig, preset
from captioner.training.run import train


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_colour_dataset(tmp_path_factory.mktemp("colours"))


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    """Exit code and stderr of `captioner ARGS`."""
    try:
        code = main(args)
    except SystemExit as exit:  # argparse's own errors
        code = exit.code
    return code, capsys.readouterr().err


def assert_one_line_usage_error(code: int, err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("captioner") and "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_set_values_take_their_fields_type():
    settings = parse_settings(
        TrainConfig,
        [
            "mirror_images=False",
            "wandb=no",
            "epochs=12",
            "learning_rate=3e-4",
            "average_decay=none",
            "steps_per_epoch=NULL",
            "devices=2",
            "strategy=ddp",
            "decoder.n_layers=4",
            "validation_generation.do_sample=YES",
        ],
    )
    assert settings == {
        "mirror_images": False,
        "wandb": False,
        "epochs": 12,
        "learning_rate": 3e-4,
        "average_decay": None,
        "steps_per_epoch": None,
        "devices": 2,
        "strategy": "ddp",
        "decoder": {"n_layers": 4},
        "validation_generation": {"do_sample": True},
    }
    assert parse_settings(TrainConfig, ["devices=auto", "mirror_images=1"]) == {
        "devices": "auto",
        "mirror_images": True,
    }
    config = preset("flickr8k-effnet", **parse_settings(TrainConfig, ["mirror_images=false"]))
    assert config.mirror_images is False  # the string "false" used to switch it on


@pytest.mark.parametrize(
    ("assignment", "fragments"),
    [
        ("epochs=twelve", ["epochs", "'twelve'", "an integer"]),
        ("mirror_images=maybe", ["mirror_images", "'maybe'", "true or false"]),
        ("learning_rate=fast", ["learning_rate", "'fast'", "a number"]),
        ("average_decay=nan", ["average_decay", "'nan'", "a number or none"]),
        ("epoch=3", ["unknown setting 'epoch'", "did you mean epochs"]),
        ("decoder.n_layer=3", ["decoder.n_layer", "did you mean decoder.n_layers"]),
        ("decoder=3", ["decoder is a group", "n_layers"]),
        ("epochs", ["'epochs' is not KEY=VALUE"]),
    ],
)
def test_a_bad_set_value_is_one_line_naming_it(assignment, fragments, capsys):
    code, err = run_cli(["train", "--set", assignment], capsys)
    assert_one_line_usage_error(code, err, *fragments)


@pytest.mark.parametrize(
    ("assignment", "fragment"),
    [
        ("epochs=0", "epochs must be an integer >= 1, got 0"),
        ("batch_size=-4", "batch_size must be an integer >= 1"),
        ("steps_per_epoch=0", "steps_per_epoch must be an integer >= 1 or none"),
        ("label_smoothing=1.5", "label_smoothing must be a number >= 0 and < 1"),
        ("decoder.dropout=1", "decoder.dropout must be a number >= 0 and < 1"),
        ("average_decay=1", "average_decay must be a number > 0 and < 1 or none"),
        ("scst_top_p=0", "scst_top_p must be a number > 0 and <= 1"),
        ("scst_samples=1", "scst_samples must be an integer from 2 to 16, got 1"),
        ("scst_samples=17", "scst_samples must be an integer from 2 to 16, got 17"),
        ("objective=ce", "objective must be xe or scst"),
        ("captions_per_image=some", "captions_per_image must be random or all"),
        ("checkpoint_every_minutes=0", "checkpoint_every_minutes must be a number > 0"),
        ("decoder.n_heads=3", "decoder.d_model must be a multiple of decoder.n_heads (3)"),
        ("validation_generation.num_beams=0", "validation_generation.num_beams must be"),
        ("precision=fp8", "precision must be none (automatic) or one of"),
        ("data_split.dev_fraction=1.5", "data_split.dev_fraction must be a number >= 0 and <= 1"),
        ("data_split.seed=-1", "data_split.seed must be an integer >= 0, got -1"),
        ("data_split.test_fraction=0.95", "must leave some photos to train, got 0.05 + 0.95"),
        ("encoder.trained_blocks=-1", "encoder.trained_blocks must be an integer from 0 to 20"),
        (
            "encoder.trained_blocks=21",
            "encoder.trained_blocks must be an integer from 0 to 20 "
            "(efficientnet-lite2 has 21 blocks), got 21",
        ),
        ("encoder_lr_scale=0", "encoder_lr_scale must be a number > 0, got 0"),
    ],
)
def test_an_out_of_range_setting_is_refused(assignment, fragment, capsys):
    code, err = run_cli(["train", "--data", "anything", "--set", assignment], capsys)
    assert_one_line_usage_error(code, err, fragment)


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        (["strategy=bogus"], "strategy='bogus': You selected an invalid strategy name"),
        (["accelerator=cpu", "devices=3,5"], "should be an int > 0"),
        (["accelerator=nonesuch"], "accelerator='nonesuch'"),
    ],
)
def test_hardware_settings_lightning_refuses_are_one_line_before_anything_is_done(
    settings, fragment, dataset, tmp_path, capsys
):
    """Lightning checks these only when the Trainer is built: they used to end in its
    traceback after feature extraction, with the output folder already written."""
    out, cache = tmp_path / "run", tmp_path / "cache"
    args = ["train", "--preset", "small", "--data", str(dataset), "--output-dir", str(out)]
    args += ["--set", f"cache_dir={cache}"]
    for setting in settings:
        args += ["--set", setting]
    code, err = run_cli(args, capsys)
    assert_one_line_usage_error(code, err, "cannot train with", fragment)
    assert not out.exists() and not cache.exists()


def test_sigterm_keeps_the_step_and_says_how_to_resume(dataset, tmp_path, capsys, monkeypatch):
    """A cluster's SIGTERM mid-epoch: last.ckpt is written at that step, and the command ends
    with exit code 143 and one line naming the --resume command, not a traceback."""
    import captioner.training.run as run

    plain_train = run.train
    monkeypatch.setattr(
        run,
        "train",
        lambda config, resume: plain_train(config, resume, False, [TerminateAtStep(1)]),
    )
    settings = [
        f"{key}={'none' if value is None else value}" for key, value in TINY_SETTINGS.items()
    ]
    output = tmp_path / "run"
    args = ["train", "--data", str(dataset), "--output-dir", str(output)]
    args += ["--set", f"cache_dir={tmp_path / 'cache'}", "--set", "checkpoint_every_minutes=none"]
    code, err = run_cli([*args, *(a for s in settings for a in ("--set", s))], capsys)
    assert code == 143 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == (
        f"captioner: stopped by SIGTERM; continue with: captioner train --output-dir {output} "
        "--resume"
    )
    last = torch.load(output / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 1 and last["epoch"] == 0


def test_trained_encoder_blocks_are_refused_for_clip_in_one_line(capsys):
    args = ["train", "--preset", "flickr30k-clip", "--data", "anything"]
    code, err = run_cli([*args, "--set", "encoder.trained_blocks=1"], capsys)
    assert_one_line_usage_error(
        code,
        err,
        "encoder.trained_blocks must be 0 with the clip encoder "
        "(only EfficientNet-Lite's last blocks can be trained), got 1",
    )


def test_model_settings_that_contradict_init_from_are_refused(tmp_path, capsys):
    """A run from init_from trains that model as it is: a contradicting encoder or decoder
    setting would be silently dropped, so it is refused; repeating the model's own is fine."""
    start = tmp_path / "start"
    start.mkdir()
    encoder = EncoderConfig(name="efficientnet-lite2")
    CaptionerConfig(encoder=encoder, decoder=DecoderConfig(n_layers=2)).save(start / "config.json")
    base = ["train", "--data", "anything", "--set", f"init_from={start}"]
    for setting, fragment in (
        ("decoder.n_layers=4", "(decoder.n_layers=2)"),
        ("encoder.trained_blocks=1", "(encoder.trained_blocks=0)"),
    ):
        code, err = run_cli([*base, "--set", setting], capsys)
        assert_one_line_usage_error(
            code, err, f"--set {setting} contradicts the model init_from names", fragment
        )
    args = build_parser().parse_args([*base, "--set", "decoder.n_layers=2"])
    assert training_config(args).init_from == str(start)


def test_usage_errors_are_one_line_and_touch_nothing(dataset, tmp_path, capsys):
    run = tmp_path / "run"
    code, err = run_cli(["train", "--preset", "flickr9k"], capsys)
    assert_one_line_usage_error(code, err, "unknown preset 'flickr9k'", "flickr8k-effnet")
    missing = ["train", "--data", str(tmp_path / "nowhere"), "--output-dir", str(run)]
    code, err = run_cli(missing, capsys)
    assert_one_line_usage_error(code, err, "no such dataset")
    code, err = run_cli(["train", "--output-dir", str(run), "--resume"], capsys)
    assert_one_line_usage_error(code, err, "nothing to resume", "train_config.json")
    code, err = run_cli(["train", "--resume"], capsys)
    assert_one_line_usage_error(code, err, "--resume needs --output-dir")
    assert not run.exists()


@pytest.mark.parametrize(
    ("saved", "fragment"),
    [
        ({"decoder": {"n_layerz": 2}}, "unknown DecoderConfig fields: ['n_layerz']"),
        ({"validation_generation": 3}, "GenerationConfig settings must be a mapping, got 3"),
        ({"epochz": 3}, "unknown TrainConfig fields: ['epochz']"),
    ],
)
def test_a_damaged_saved_config_is_one_line_naming_the_field(saved, fragment, tmp_path, capsys):
    (tmp_path / "train_config.json").write_text(json.dumps(saved))
    code, err = run_cli(["train", "--output-dir", str(tmp_path), "--resume"], capsys)
    assert_one_line_usage_error(code, err, "is not a training config", fragment)


class StopAfterFirstEpoch(Callback):
    def on_train_epoch_end(self, trainer, module):
        trainer.should_stop = True


def test_resume_alone_continues_the_run_and_refuses_contradicting_flags(dataset, tmp_path, capsys):
    config = tiny_config(dataset, tmp_path, epochs=2, early_stopping_patience=9)
    run = tmp_path / "run"
    train(config, progress=False, callbacks=[StopAfterFirstEpoch()])
    saved = (run / "train_config.json").read_bytes()
    versions = sorted((run / "logs").iterdir())

    for flags in (["--set", "epochs=5"], ["--data", str(tmp_path)], ["--preset", "coco-clip"]):
        code, err = run_cli(["train", "--output-dir", str(run), "--resume", *flags], capsys)
        assert_one_line_usage_error(code, err, "contradicts the run in", "leave it out")
    code, err = run_cli(
        ["train", "--output-dir", str(run), "--resume", "--set", "epochs=5"], capsys
    )
    assert "epochs=5" in err and "(epochs=2)" in err
    assert (run / "train_config.json").read_bytes() == saved  # nothing touched
    assert sorted((run / "logs").iterdir()) == versions

    # Repeating the run's own settings is fine; so is a later stopping time.
    again = ["--data", str(dataset), "--set", "epochs=2", "--set", "max_minutes=30"]
    code = main(["train", "--output-dir", str(run), "--resume", *again])
    assert code == 0
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 1 and last["global_step"] == 6  # the second epoch ran
    assert json.loads((run / "train_config.json").read_text())["max_minutes"] == 30

    # Without --resume, a new run never replaces this one's best/, checkpoints or settings (D23)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    capsys.readouterr()
    code, err = run_cli(["train", "--output-dir", str(run), "--data", str(dataset)], capsys)
    assert_one_line_usage_error(code, err, "already holds train_config.json", "--resume")
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


@pytest.mark.parametrize("command", ["train", "features", "eval"])
def test_every_flag_has_help_and_defaults_to_none(command):
    parser = _subparsers()[command]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"{command} {action.option_strings} has no help"
        assert action.default in (None, False, []), f"{command} {action.option_strings}"


def test_train_help_lists_the_presets():
    text = _subparsers()["train"].format_help()
    assert all(name in text for name in PRESETS)


def test_features_and_eval_refuse_bad_input_in_one_line(dataset, tmp_path, capsys):
    code, err = run_cli(["features", "--data", str(tmp_path / "nowhere")], capsys)
    assert_one_line_usage_error(code, err, "no such dataset")
    code, err = run_cli(["features", "--data", str(dataset), "--encoder", "resnet"], capsys)
    assert_one_line_usage_error(code, err, "unknown encoder 'resnet'")
    code, err = run_cli(["eval", "--data", str(tmp_path / "nowhere")], capsys)
    assert_one_line_usage_error(code, err, "no such dataset")
    code, err = run_cli(["eval", "--data", str(dataset), "--limit", "0"], capsys)
    assert_one_line_usage_error(code, err, "--limit must be 1 or more")
    beam = ["eval", "--data", str(dataset), "--num-beams", "0", "--cache-dir", str(tmp_path / "c")]
    code, err = run_cli(beam, capsys)
    assert_one_line_usage_error(code, err, "num_beams must be")


def test_features_caches_what_train_reads(dataset, tmp_path, capsys):
    """With trained encoder blocks, train reads the activations entering them: `features`
    caches those, by default as the default preset trains, or for --trained-blocks N."""
    defaults = build_parser().parse_args(["features", "--data", "x"])
    assert encoder_config(defaults) == preset(DEFAULT_PRESET).encoder
    assert encoder_config(defaults).trained_blocks == 2
    named = build_parser().parse_args(
        ["features", "--data", "x", "--encoder", "efficientnet-lite0"]
    )
    assert encoder_config(named).trained_blocks == 0  # another encoder: the preset's is not its

    lite0 = ["features", "--data", str(dataset), "--encoder", "efficientnet-lite0"]
    code, err = run_cli([*lite0, "--trained-blocks", "16"], capsys)
    assert_one_line_usage_error(code, err, "encoder.trained_blocks must be an integer from 0 to 15")
    root = tmp_path / "cache"
    assert main([*lite0, "--trained-blocks", "1", "--cache-dir", str(root)]) == 0
    encoder = build_encoder(EncoderConfig("efficientnet-lite0", trained_blocks=1))
    cache = FeatureCache(cache_dir(root, encoder))
    assert len(cache) > 0 and [d.name for d in root.iterdir()] == [cache.directory.name]
    assert cache.array.shape[-1] == encoder.dim == 192  # the last block's input, not 1280 wide


def test_evaluation_does_not_import_training():
    code = (
        "import sys, captioner.evaluation.evaluate; "
        "print(sorted(m for m in sys.modules if m.startswith('captioner.training')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
