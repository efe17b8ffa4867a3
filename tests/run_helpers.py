"""Callbacks the fault-tolerance and DDP tests load into a ``cs-train`` subprocess (``--trainer.callbacks+=``)."""

import json
import os
import signal

import torch
from lightning.pytorch.callbacks import Callback


class SignalAt(Callback):
    """Sends ``signum`` to this process once, after the training batch that completes ``step`` optimizer steps, on
    the ranks named (``"0"``, ``"1"``, ``"0,1"``) or on ``"all"``."""

    def __init__(self, step: int, signum: int = int(signal.SIGTERM), ranks: str = "0"):
        self.step, self.signum, self.ranks = step, signum, ranks

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        chosen = self.ranks == "all" or str(trainer.global_rank) in self.ranks.split(",")
        if trainer.global_step == self.step and chosen:
            os.kill(os.getpid(), self.signum)


class RecordBatches(Callback):
    """Appends ``{"step", "epoch", "rank", "ids", "padding"}`` of every training batch to a JSON Lines file (across
    resumes); ``padding`` marks the rows that only fill a short last batch (all false from a collator without it)."""

    def __init__(self, path: str):
        self.path = path

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        padding = batch["padding"].tolist() if "padding" in batch else [False] * len(batch["ids"])
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": trainer.global_step, "epoch": trainer.current_epoch, "rank": trainer.global_rank,
                                "ids": list(batch["ids"]), "padding": padding}) + "\n")


class NaNAt(Callback):
    """Poisons the weights with NaN before the training batch of ``step``, as a diverging run would."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            with torch.no_grad():
                next(pl_module.parameters()).fill_(float("nan"))
