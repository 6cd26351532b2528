"""The commands beyond captioning and serving need the training extra (`captioner[train]`).

The command line checks for it before running one of them (or the command, before any work, where
its arguments decide), so that a plain install answers in one line what to install (exit code 2)
instead of a traceback, or a failure after captioning a whole split.
"""

from __future__ import annotations

from importlib.util import find_spec

from captioner.hub import TRAIN_EXTRA

# The training extra's top-level modules that each command imports.
NEEDED_MODULES: dict[str, tuple[str, ...]] = {
    "train": ("torch", "lightning", "pycocoevalcap"),  # validation scores CIDEr-D every epoch
    "eval": ("torch", "pycocoevalcap"),
    "features": ("torch",),
    "export": ("torch", "onnx"),
}
# The commands that check for the extra themselves, once their arguments say whether they need
# it: `export --web` of a model that has its int8 graphs copies them and needs none of it.
CHECKED_BY_THE_COMMAND = frozenset({"export"})


def require_training_extra(command: str, why: str = "") -> None:
    """UsageError naming the extra to install when a module `command` needs is missing; `why`
    says, where the command needs it only sometimes, why this time."""
    from captioner.cli import UsageError

    missing = [name for name in NEEDED_MODULES[command] if find_spec(name) is None]
    if missing:
        because = f"; {why}" if why else ""
        raise UsageError(
            f"{command} needs the training extra: {TRAIN_EXTRA} (missing: {', '.join(missing)}"
            f"{because})"
        )
