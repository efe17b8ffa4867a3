"""Random-number generator states in checkpoints, so a resumed run draws what an uninterrupted one would."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn

from cs_lightning.distributed import gather_lists


def _plain(states: dict[str, Any]) -> dict[str, Any]:
    """The states as tensors and plain values, so checkpoints still load with ``weights_only=True``."""
    out = dict(states)
    if "numpy" in out:
        kind, keys, pos, has_gauss, gauss = out["numpy"]
        out["numpy"] = [kind, torch.as_tensor(keys.astype("int64")), int(pos), int(has_gauss), float(gauss)]
    version, state, gauss = out["python"]
    out["python"] = [version, list(state), gauss]
    return out


def _restored(states: dict[str, Any]) -> dict[str, Any]:
    out = dict(states)
    if "numpy" in out:
        import numpy as np

        kind, keys, pos, has_gauss, gauss = out["numpy"]
        out["numpy"] = (kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss)
    if not torch.cuda.is_available():
        out.pop("torch.cuda", None)
    return out


class RandomState(Callback):
    """Saves every rank's random-number generators (Python, NumPy, torch CPU and CUDA) in each checkpoint and
    restores them when ``--ckpt_path`` resumes, right before the first training batch: dropout then draws the masks
    an uninterrupted run would have drawn, so a stopped and resumed run ends with the same weights.

    The data order needs none of this (the batch sampler has its own seeded generator, and its position travels in
    the data module's state), and cs-lightning's loaders draw no global random numbers when they start an epoch, so
    nothing between the save and the next batch moves the generators in one run and not in the other. A checkpoint
    written by another number of ranks cannot give every rank its own state: the resumed run then warns and goes on
    with fresh generators.
    """

    def __init__(self):
        self._pending: list[dict] | None = None

    def state_dict(self) -> dict[str, Any]:
        # called on every rank while a checkpoint is made (rank zero writes it): a collective is safe here
        return {"ranks": gather_lists([_plain(_collect_rng_states())])}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict.get("ranks")

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        if self._pending is None:
            return
        ranks, self._pending = self._pending, None
        if len(ranks) != trainer.world_size:
            rank_zero_warn(f"the checkpoint holds the random states of {len(ranks)} rank(s), this run has "
                           f"{trainer.world_size}: resuming with fresh random states (dropout masks will differ from "
                           "an uninterrupted run)")
            return
        _set_rng_states(_restored(ranks[trainer.global_rank]))
