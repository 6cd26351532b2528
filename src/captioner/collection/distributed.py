"""A collection job over several processes, GPUs or machines: Lightning's `Trainer.predict`.

Launched like training (`--devices N --num-nodes M --strategy ddp`, under `torchrun` or SLURM):
every rank builds the same list of images left to do, captions every world-th of them and
appends to its own `<output>.part-<rank>.<ext>`; rank 0 merges those into the output at the
end. Needs the `train` extra (Lightning)."""

from __future__ import annotations

import logging
import warnings

import lightning as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException

from captioner.collection.job import CollectionJob, CollectionSummary, LoadedBatch
from captioner.collection.loader import BatchLoader
from captioner.config import check_int
from captioner.runtime.torch import TorchRuntime


class CollectionPredictor(L.LightningModule):
    """Runs a CollectionJob's steps from Lightning's predict loop on every rank."""

    def __init__(self, job: CollectionJob):
        super().__init__()
        # The model is not a submodule: Lightning must not wrap or re-broadcast a frozen model
        # (that would touch its weights in place); setup() puts it on this rank's device.
        self.job = job
        self.summary: CollectionSummary | None = None

    def setup(self, stage: str) -> None:
        strategy = self.trainer.strategy
        runtime = self.job.model.runtime
        if isinstance(runtime, TorchRuntime):  # ONNX Runtime runs on the host's CPU
            runtime.model.to(strategy.root_device)
        self.share = self.job.start(self.global_rank, self.trainer.world_size, strategy.barrier)

    def predict_dataloader(self) -> BatchLoader:
        return self.job.loader(self.share, fresh_workers=True)

    def transfer_batch_to_device(
        self, batch: LoadedBatch, device: torch.device, dataloader_idx: int
    ) -> LoadedBatch:
        return batch  # the job moves the pixels; the rest stays on the host

    def predict_step(self, batch: LoadedBatch, batch_idx: int) -> None:
        self.job.process(batch)

    def on_predict_end(self) -> None:
        strategy = self.trainer.strategy

        def sum_over_ranks(counts: list[int]) -> list[int]:
            total = strategy.reduce(torch.tensor(counts, device=strategy.root_device), None, "sum")
            return [int(count) for count in total.tolist()]

        self.summary = self.job.finish(strategy.barrier, sum_over_ranks)


def predict_collection(
    job: CollectionJob,
    devices: int | str = "auto",
    num_nodes: int = 1,
    strategy: str = "auto",
    accelerator: str = "auto",
) -> CollectionSummary:
    """Run `job` as a Lightning predict job; every rank returns the same summary (its counts
    summed over the ranks). ValueError for devices, nodes or a strategy Lightning refuses."""
    if devices != "auto":
        check_int("devices", devices, 1, None)
    check_int("num_nodes", num_nodes, 1, None)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # device and tip notes
    module = CollectionPredictor(job)
    try:
        trainer = L.Trainer(
            accelerator=accelerator,
            devices=devices,
            num_nodes=num_nodes,
            strategy=strategy,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,  # the job's own bar counts images, on rank 0
            enable_model_summary=False,
            use_distributed_sampler=False,  # the job shares the images out itself, each once
        )
    except MisconfigurationException as error:
        raise ValueError(" ".join(str(error).split())) from None
    with warnings.catch_warnings():
        # Lightning's notes on a predict step that returns nothing (on purpose: rows are
        # written as they come) and on its own use of torch's pytree API.
        warnings.filterwarnings("ignore", message=".*predict returned None.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        trainer.predict(module, return_predictions=False)
    assert module.summary is not None  # on_predict_end ran on every rank
    return module.summary
