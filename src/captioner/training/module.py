"""The Lightning module: teacher-forced cross-entropy, and dev metrics from real decoding."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.types import OptimizerLRScheduler

from captioner.batch import Batch
from captioner.objective import teacher_forced
from captioner.torch_model import CaptionModel
from captioner.training.config import TrainConfig


class CaptionerModule(L.LightningModule):
    def __init__(self, model: CaptionModel, config: TrainConfig):
        super().__init__()
        self.model = model
        self.config = config
        # Plain dicts, so checkpoints hold the full configuration and load without unpickling code.
        self.save_hyperparameters(
            {
                "train": config.to_dict(),
                "model": model.config.to_dict(),
                "vocab": model.tokenizer.vocab,
            }
        )
        self.strict_loading = False  # the frozen encoder's weights are left out of checkpoints
        self._predictions: dict[str, str] = {}
        self._references: dict[str, list[str]] = {}
        self._dev_correct = self._dev_count = 0

    def training_step(self, batch: Batch, _: int) -> torch.Tensor:
        loss, correct, count = teacher_forced(self.model, batch, self.config.label_smoothing)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch.ids))
        self.log("train/token_acc", correct / count, prog_bar=True, batch_size=len(batch.ids))
        return loss

    def validation_step(
        self, batch: tuple[torch.Tensor, list[str], list[list[str]]], _: int
    ) -> None:
        features, image_ids, references = batch
        collator = self.trainer.datamodule.collator  # type: ignore[attr-defined]  # set by Lightning, untyped
        # Teacher forcing on every reference caption of each image.
        flat = collator.tokenize(features, references).to(self.device)
        loss, correct, count = teacher_forced(self.model, flat)
        self.log("val/loss", loss, sync_dist=True, batch_size=len(flat.ids))
        self._dev_correct += int(correct)
        self._dev_count += int(count)
        captions = self.model.generate_from_features(features, self.config.validation_generation)
        for image_id, caption, refs in zip(image_ids, captions, references):
            self._predictions[image_id] = caption.text
            self._references[image_id] = refs

    def on_validation_epoch_end(self) -> None:
        from captioner.evaluation import caption_metrics

        predictions, references = self._predictions, self._references
        correct, count = self._dev_correct, self._dev_count
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, (predictions, references, correct, count))
            predictions = {k: v for part in gathered for k, v in part[0].items()}
            references = {k: v for part in gathered for k, v in part[1].items()}
            correct = sum(part[2] for part in gathered)
            count = sum(part[3] for part in gathered)
        if predictions:
            scores = caption_metrics(predictions, references, meteor=False)
            for name in ("bleu4", "cider", "rouge_l"):
                score = scores[name]
                assert score is not None  # only METEOR may be missing
                self.log(f"val/{name}", float(score), prog_bar=name != "rouge_l")
            self.log("val/token_acc", correct / max(count, 1))
        self._predictions, self._references = {}, {}
        self._dev_correct = self._dev_count = 0

    def configure_optimizers(self) -> OptimizerLRScheduler:
        # (trained encoder block, weight-decayed) -> parameters, in this order: the decoder's
        # matrices, its other parameters, then the encoder's top at its lower learning rate.
        groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {
            (False, True): [],
            (False, False): [],
            (True, True): [],
            (True, False): [],
        }
        for name, parameter in self.model.decoder.named_parameters():
            # Norms, biases, embeddings and positions are not weight-decayed.
            decays = parameter.ndim >= 2 and "embedding" not in name and "positions" not in name
            groups[name.startswith("image_stage."), decays].append(parameter)
        learning_rate = self.config.learning_rate
        optimizer = torch.optim.AdamW(
            [
                {
                    "params": parameters,
                    "weight_decay": self.config.weight_decay if decays else 0.0,
                    "lr": learning_rate * (self.config.encoder_lr_scale if encoder else 1.0),
                }
                for (encoder, decays), parameters in groups.items()
                if parameters or not encoder  # the decoder's two groups, as before
            ],
            lr=learning_rate,
            betas=(0.9, 0.98),
        )
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = min(self.config.warmup_steps, total // 2)

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(total - warmup, 1)
            return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith("model.encoder.")]:
            del state[key]
