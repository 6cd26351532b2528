"""Where a saved model comes from: a folder, the Hugging Face hub, a W&B artifact, or the package."""

from __future__ import annotations

from pathlib import Path

BUNDLED_DIR = Path(__file__).parent / "pretrained" / "flickr8k-effnet"
WANDB_PREFIX = "wandb:"


class ModelNotFoundError(FileNotFoundError):
    """No model at the given source; the message says what was tried."""


def resolve_model_dir(source: str | Path | None) -> Path:
    """A local folder holding config.json, model.safetensors and tokenizer.json."""
    if source is None:
        if not (BUNDLED_DIR / "config.json").is_file():
            raise ModelNotFoundError(
                "no bundled default model in this installation: train one with "
                "`captioner train --preset flickr8k-effnet` or pass a model folder or hub id"
            )
        return BUNDLED_DIR
    text = str(source)
    if Path(text).is_dir():
        return Path(text)
    if text.startswith(WANDB_PREFIX):
        return _from_wandb(text[len(WANDB_PREFIX) :])
    if Path(text).exists() or text.startswith((".", "/", "~")) or text.count("/") != 1:
        raise ModelNotFoundError(
            f"{text}: not a model folder, hub id (owner/name) or wandb: artifact"
        )
    return _from_hub(text)


def _from_hub(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors"]))
    except Exception as error:  # offline, missing repo, auth: all mean "cannot get it"
        raise ModelNotFoundError(
            f"could not fetch {repo_id} from the Hugging Face hub: {error}"
        ) from None


def _from_wandb(artifact: str) -> Path:
    """`entity/project/name:version`, as the original system loaded its model from W&B."""
    import wandb

    try:
        return Path(wandb.Api().artifact(artifact, type="model").download())
    except Exception as error:  # no network, no login, no such artifact
        raise ModelNotFoundError(f"could not fetch W&B artifact {artifact}: {error}") from None
