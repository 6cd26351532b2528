"""What `--resume` continues from: `last.ckpt`, written often enough, holding every random state.

A resumed run equals the uninterrupted one bit for bit. Lightning's checkpoint has the weights,
optimizer, schedule, loop counters and callbacks' states; the training loader adds its position
in the epoch (`ResumableLoader`) and the global random generators, which dropout draws from
(`ExactResume` saves and restores both). Nothing else draws from them between a checkpoint and the next training step: the
loaders and the feature cache have their own generators, and validation decodes greedily.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any, cast

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, Checkpoint, EarlyStopping

CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
_NumpyState = tuple[str, np.ndarray, int, int, float]  # np.random.get_state()'s legacy form


def last_checkpoint(output_dir: str | Path) -> Path:
    return Path(output_dir) / CHECKPOINT_DIR / LAST_CHECKPOINT


class ResumeCheckpoint(Checkpoint):
    """Writes `last.ckpt` at the end of every epoch, and within an epoch after every
    `every_steps` optimizer steps, at the first step `every_minutes` after the last write, and
    at the step during which the process got SIGTERM (before the run stops there).
    A write goes to a temporary file first, so a kill mid-write keeps the previous checkpoint.

    A `Checkpoint`, so Lightning calls it after the other callbacks (the early-stopping count,
    the exported best model and the weight average are in the state it saves)."""

    def __init__(self, path: Path, every_steps: int | None, every_minutes: float | None):
        self.path = path
        self.every_steps = every_steps
        self.every_seconds = every_minutes * 60 if every_minutes else None
        self._written_at = time.monotonic()

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._write(trainer)  # after validation, and after early stopping has decided

    def on_train_batch_end(
        self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any, index: int
    ) -> None:
        if index + 1 >= trainer.num_training_batches:
            return  # the epoch's last step: the end-of-epoch checkpoint follows
        due = bool(self.every_steps and trainer.global_step % self.every_steps == 0)
        late = self.every_seconds is not None and (
            time.monotonic() - self._written_at >= self.every_seconds
        )
        # SIGTERM (a preempted or cancelled job): Lightning stops before the next step, so
        # this step is the last chance to keep the work since the previous checkpoint.
        due |= trainer.strategy.broadcast(late or trainer.received_sigterm)  # all ranks write
        if due:
            self._write(trainer)

    def _write(self, trainer: L.Trainer) -> None:
        partial = self.path.with_name(self.path.name + ".partial")
        trainer.save_checkpoint(partial, weights_only=False)  # all ranks join; rank 0 writes
        if trainer.is_global_zero:
            os.replace(partial, self.path)
        trainer.strategy.barrier("last.ckpt")
        self._written_at = time.monotonic()


class ExactResume(Callback):
    """Saves what Lightning's checkpoint lacks for an exact resume, and restores it when
    training starts from a checkpoint: the global random generators (torch's CPU and CUDA ones,
    Python's and NumPy's) and the training loader's place in its epoch. Stored as tensors and
    lists, so checkpoints load with `weights_only=True`.

    Lightning would restore a stateful loader itself, but not when `configure_optimizers`
    asks for `estimated_stepping_batches`: that sets the loader up before the checkpoint's loop
    state is read, and its state is then never loaded (Lightning 2.6)."""

    def __init__(self) -> None:
        self._trainer: L.Trainer | None = None
        self._restore: dict[str, Any] | None = None

    def setup(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        version, state, gauss = random.getstate()
        # legacy=True (the default): a tuple, which numpy's annotation leaves as a union with a dict
        kind, keys, position, has_gauss, cached = cast(_NumpyState, np.random.get_state())
        loader = self._trainer.train_dataloader if self._trainer is not None else None
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "python": [version, list(state), gauss],
            "numpy": [kind, keys.tolist(), position, has_gauss, cached],
            "loader": loader.state_dict()
            if loader is not None and hasattr(loader, "state_dict")
            else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._restore = state

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        # After everything that set the run up, before the first batch is drawn.
        if self._restore is None:
            return
        state, self._restore = self._restore, None
        if state["loader"] is not None:
            assert trainer.train_dataloader is not None  # set up before training starts
            trainer.train_dataloader.load_state_dict(state["loader"])
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        version, values, gauss = state["python"]
        random.setstate((version, tuple(values), gauss))
        kind, keys, position, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, np.array(keys, dtype=np.uint32), position, has_gauss, cached))


class StoppedStaysStopped(EarlyStopping):
    """Early stopping that a resume honours. Lightning restores the count of validations
    without a new best, but not the decision it led to, so resuming a run that early stopping
    ended would train one more epoch and stop again; this one trains none."""

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self.wait_count >= self.patience:
            trainer.should_stop = True
