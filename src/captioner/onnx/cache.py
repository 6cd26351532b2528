"""Graphs exported from a `CaptionModel`'s PyTorch weights, once, into the user's cache.

A model folder without graphs (a training run's `best/`) still captions in ONNX Runtime: its
graphs are exported at first use into `cache_root()/onnx/<hash of the weights>-<variant>/`.
Each export is written to a temporary folder, checked, and renamed into place with a manifest
of its files' sizes and SHA-256; a folder whose files no longer match (a disk filled during a
copy, a file truncated by hand) is exported again instead of failing every call.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from captioner.cache import cache_root
from captioner.onnx.export import FORMAT_VERSION, GRAPHS_REVISION, export_onnx
from captioner.runtime.onnx import OnnxRuntime
from captioner.runtime.torch import TorchRuntime

if TYPE_CHECKING:
    from captioner.torch_model import CaptionModel

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
# A temporary export folder older than this was left by a killed process: removed.
STALE_EXPORT_S = 3600.0


def weights_key(model: CaptionModel) -> str:
    """Names exactly what the export depends on: the decoder's shape and weights, the encoder,
    the vocabulary, the decoding defaults, and the export format and tools."""
    import onnxruntime

    digest = hashlib.sha256()
    facts: list[object] = [
        model.config.to_dict(),
        model.tokenizer.vocab,
        FORMAT_VERSION,
        GRAPHS_REVISION,
    ]
    facts += [torch.__version__, onnxruntime.__version__]
    digest.update(json.dumps(facts, sort_keys=True, default=str).encode())
    for name, tensor in model.decoder.state_dict().items():
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:24]


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(directory: Path) -> None:
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.name != MANIFEST_FILE)
    manifest = {p.name: {"bytes": p.stat().st_size, "sha256": file_digest(p)} for p in files}
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1) + "\n")


def is_intact(directory: Path) -> bool:
    """Whether every file the manifest lists is there with its size and hash."""
    try:
        manifest = json.loads((directory / MANIFEST_FILE).read_text())
        return bool(manifest) and all(
            (directory / name).stat().st_size == entry["bytes"]
            and file_digest(directory / name) == entry["sha256"]
            for name, entry in manifest.items()
        )
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return False


def remove_stale_exports(root: Path) -> None:
    """Temporary folders of exports that a killed process never finished."""
    now = time.time()
    for scratch in root.glob("export-*"):
        try:
            if now - scratch.stat().st_mtime > STALE_EXPORT_S:
                shutil.rmtree(scratch, ignore_errors=True)
        except OSError:
            continue


def cached_export(model: CaptionModel, variant: str) -> Path:
    """The folder of `model`'s `variant` graphs in the cache, exported now if missing or
    damaged."""
    from captioner.encoders.efficientnet import EfficientNetLiteEncoder

    root = cache_root() / "onnx"
    directory = root / f"{weights_key(model)}-{variant}"
    if is_intact(directory):
        return directory
    log.info("exporting the model to ONNX (%s), once for these weights: %s", variant, root)
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_exports(root)
    scratch = Path(tempfile.mkdtemp(prefix="export-", dir=root))
    try:
        with_encoder = isinstance(model.encoder, EfficientNetLiteEncoder)
        export_onnx(model, scratch, [variant], encoder=with_encoder)
        write_manifest(scratch)
        if directory.exists():  # damaged: ours to replace (the cache holds only our exports)
            shutil.rmtree(directory, ignore_errors=True)
        try:
            scratch.rename(directory)
        except OSError:  # a concurrent export got there first
            if not is_intact(directory):
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return directory


def cached_runtime(model: CaptionModel, variant: str) -> OnnxRuntime:
    """ONNX Runtime over `model`'s cached graphs; an encoder without a graph (CLIP) runs in
    PyTorch beside them."""
    directory = cached_export(model, variant)
    has_encoder = (directory / "encoder.onnx").is_file()
    encoder = None if has_encoder else TorchRuntime(model).encode
    return OnnxRuntime(directory, variant, encoder=encoder)
