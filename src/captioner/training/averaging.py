"""An exponential moving average of the decoder's weights: what dev scoring, early stopping
and the exported best model see.

On a dataset as small as Flickr8k the dev scores of the raw weights jump by several CIDEr points
from epoch to epoch, and self-critical steps are noisier still; the average is a cheap ensemble
of the last few hundred steps. Lightning's `EMAWeightAveraging` averages the whole module, the
frozen encoder included (which checkpoints here leave out), so this averages the decoder alone.
"""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from captioner.training.module import CaptionerModule


class DecoderAverage(Callback):
    """Updates the average after every optimizer step and swaps it in for validation.

    It must come after `ExportBest` in the callback list, so the export still sees the average;
    Lightning runs its checkpoint callbacks last, so checkpoints hold the raw weights, and the
    average travels in this callback's state: a resumed run continues both exactly.
    """

    def __init__(self, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"the average's decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.average: AveragedModel | None = None
        self._swapped = False

    def setup(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        assert isinstance(module, CaptionerModule)
        if stage == "fit" and self.average is None:
            self.average = AveragedModel(
                module.model.decoder,
                multi_avg_fn=get_ema_multi_avg_fn(self.decay),
                device=trainer.strategy.root_device,
                use_buffers=True,
            )

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *_: object) -> None:
        assert isinstance(module, CaptionerModule) and self.average is not None  # set up to fit
        self.average.update_parameters(module.model.decoder)

    def on_validation_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        assert isinstance(module, CaptionerModule)
        if self.average is not None and trainer.state.fn == "fit":
            self._swap(module)

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        assert isinstance(module, CaptionerModule)
        if self._swapped:
            self._swap(module)

    @torch.no_grad()
    def _swap(self, module: CaptionerModule) -> None:
        assert self.average is not None  # swapped only once set up
        current = [*module.model.decoder.parameters(), *module.model.decoder.buffers()]
        averaged = [*self.average.module.parameters(), *self.average.module.buffers()]
        for mine, theirs in zip(current, averaged, strict=True):
            held = mine.detach().clone()
            mine.copy_(theirs)
            theirs.copy_(held)
        self._swapped = not self._swapped

    def state_dict(self) -> dict:
        return {"average": self.average.state_dict() if self.average is not None else None}

    def load_state_dict(self, state: dict) -> None:
        if state["average"] is not None:
            assert self.average is not None  # setup ran before the state loads
            self.average.load_state_dict(state["average"])
