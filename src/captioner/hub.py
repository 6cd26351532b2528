"""Model folders: what one holds, and where it comes from (a name, a folder, the Hugging Face hub,
a W&B artifact).

A saved model folder holds `config.json` (`CaptionerConfig`), `tokenizer.json` and, for PyTorch,
`model.safetensors` (the decoder's weights); an exported one `captioner.json` and its ONNX graphs
(`captioner.onnx`). The bundled model has both.
"""

from __future__ import annotations

import logging
from pathlib import Path

from captioner.config import CaptionerConfig
from captioner.tokenizer import CaptionTokenizer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
DESCRIPTION_FILE = "captioner.json"
# The models that ship inside the package, by name.
BUNDLED_MODELS = {"flickr8k-effnet": Path(__file__).parent / "pretrained" / "flickr8k-effnet"}
DEFAULT_MODEL = "flickr8k-effnet"
BUNDLED_DIR = BUNDLED_MODELS[DEFAULT_MODEL]
WANDB_PREFIX = "wandb:"
# A training run's output folder keeps its best model here (`captioner train --output-dir`).
BEST_SUBFOLDER = "best"
TRAIN_EXTRA = "pip install 'captioner[train]'"

log = logging.getLogger(__name__)


class ModelNotFoundError(FileNotFoundError):
    """No model at the given source; the message says what was tried."""


class ModelLoadError(ValueError):
    """A model folder that cannot be read: the message names the file and what is wrong."""


class MissingExtraError(ImportError):
    """What was asked needs an optional extra; the message names the pip command."""


def missing_extra(what: str) -> MissingExtraError:
    return MissingExtraError(f"{what} needs PyTorch, the training extra: {TRAIN_EXTRA}")


def resolve_model_dir(source: str | Path | None) -> Path:
    """A local folder holding a saved or exported model."""
    text = DEFAULT_MODEL if source is None else str(source)
    if text in BUNDLED_MODELS:
        directory = BUNDLED_MODELS[text]
        if not (directory / CONFIG_FILE).is_file():
            raise ModelNotFoundError(
                f"the bundled model {text} is not in this installation: pass a model folder or "
                "hub id, or train one with `captioner train`"
            )
        return directory
    path = Path(text).expanduser()
    if path.is_dir():
        return _model_folder(path)
    if text.startswith(WANDB_PREFIX):
        return _from_wandb(text[len(WANDB_PREFIX) :])
    if path.exists() or text.startswith((".", "/", "~")) or text.count("/") != 1:
        names = ", ".join(BUNDLED_MODELS)
        raise ModelNotFoundError(
            f"{text}: not a model folder, a bundled model ({names}), a hub id (owner/name) or "
            "a wandb: artifact"
        )
    return _from_hub(text)


def _model_folder(path: Path) -> Path:
    """`path` itself, or a training run's best model when `path` is the run's output folder."""
    if (path / CONFIG_FILE).is_file():
        return path
    best = path / BEST_SUBFOLDER
    if (best / CONFIG_FILE).is_file():
        log.warning("%s is a training run: using its best model, %s", path, best)
        return best
    raise ModelNotFoundError(f"{path}: no {CONFIG_FILE} here: not a saved model folder")


def load_config(directory: Path) -> CaptionerConfig:
    path = directory / CONFIG_FILE
    try:
        return CaptionerConfig.load(path)
    except (OSError, UnicodeDecodeError, ValueError, TypeError, AttributeError) as error:
        raise ModelLoadError(f"{path}: not a readable model config ({error})") from None


def load_tokenizer(directory: Path) -> CaptionTokenizer:
    path = directory / TOKENIZER_FILE
    try:
        return CaptionTokenizer.load(path)
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError, IndexError) as error:
        raise ModelLoadError(f"{path}: not a readable tokenizer ({error})") from None


def _from_hub(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise MissingExtraError(
            f"{repo_id}: models from the Hugging Face hub need huggingface_hub: "
            "pip install 'captioner[hub]'"
        ) from None

    try:
        patterns = ["*.json", "*.safetensors", "*.onnx"]
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as error:  # offline, missing repo, auth: all mean "cannot get it"
        raise ModelNotFoundError(
            f"could not fetch {repo_id} from the Hugging Face hub: {error}"
        ) from None


def _from_wandb(artifact: str) -> Path:
    """`entity/project/name:version`, a model logged as a W&B artifact."""
    try:
        import wandb
    except ImportError:
        raise MissingExtraError(f"W&B artifacts need wandb: {TRAIN_EXTRA}") from None
    try:
        return Path(wandb.Api().artifact(artifact, type="model").download())
    except Exception as error:  # no network, no login, no such artifact
        raise ModelNotFoundError(f"could not fetch W&B artifact {artifact}: {error}") from None
