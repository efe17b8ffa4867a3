"""Checkpointing that keeps ``last.ckpt`` current, so ``--ckpt_path last`` resumes where training stopped, and writes
little: best checkpoints hold weights only, and files are written at most every ``write_interval`` minutes."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from lightning.fabric.utilities.apply_func import apply_to_collection
from lightning.pytorch.callbacks import ModelCheckpoint


def _epoch_ends_here(trainer) -> bool:
    """Whether the batch just trained is the epoch's last. Lightning 2.6 cannot resume from a checkpoint taken at
    that point (it skips the next epoch), so such saves wait for the epoch-end save that follows."""
    return bool(trainer.fit_loop.epoch_loop.batch_progress.is_last_batch)


def _training_ends_here(trainer) -> bool:
    """Whether this save point is the run's last by its limits (the last epoch's end, or ``max_steps`` reached): its
    files are written as they come, as Lightning writes them. (An early stop is found out later: fit's end writes
    what is pending then.)"""
    steps_done = trainer.max_steps is not None and 0 <= trainer.max_steps <= trainer.global_step
    last_epoch = (trainer.max_epochs is not None and trainer.max_epochs >= 0
                  and trainer.current_epoch >= trainer.max_epochs - 1 and _epoch_ends_here(trainer))
    return steps_done or last_epoch


class BestAndLastCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, except that ``last.ckpt`` follows every save point, best checkpoints hold the
    weights only, and writing is paced by ``write_interval``.

    Lightning 2.6 rewrites ``last.ckpt`` only when a new best checkpoint is saved, so after a few epochs without
    improvement ``--ckpt_path last`` would resume from an old epoch and redo (or lose) work. With
    ``every_n_train_steps`` it also defers every save to the next validation while the monitored metric is missing
    (the whole first epoch): here ``last.ckpt`` is written every N steps regardless, which is what a pre-emptible
    job needs.

    What is written: ``last.ckpt`` is the full state (weights, optimizer, schedule, loops, random generators: what
    ``--ckpt_path last`` resumes from); ``best*.ckpt`` the weights and hyper-parameters only (what ``test``,
    ``validate``, ``predict``, ``cs-export`` and ``cs-chat`` read; a third of the size with AdamW).

    Args:
        write_interval: minutes between writes. A save point sooner than that after the previous write (or the
            start of fit) writes nothing: a new best is kept in host memory (a copy of the weights) and written
            later, ``last.ckpt`` is marked stale. Everything pending is written at the next save point past the
            interval, when fit ends, when a pre-emption signal stops it (with ``last.ckpt``, see
            :class:`~cs_lightning.callbacks.Preemption`) and when it fails (the pending best only: the state at the
            failure may be broken). A run shorter than the interval therefore writes ``last.ckpt`` and its best
            checkpoint once each; a crash that sends no signal (a killed node) loses at most this much work.
            ``0``: write at every save point. Default None: 10 minutes, or 0 when ``every_n_train_steps`` or
            ``train_time_interval`` asks for saves of its own.
        best_weights_only: False writes best checkpoints with the full training state too.
    """

    def __init__(self, *args, write_interval: float | None = None, best_weights_only: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        if write_interval is None:
            write_interval = 0.0 if (self._every_n_train_steps or self._train_time_interval) else 10.0
        if write_interval < 0:
            raise ValueError(f"checkpoint.write_interval must be 0 or more minutes, got {write_interval}")
        self.write_interval = float(write_interval)
        self.best_weights_only = best_weights_only
        self._pending: dict[str, dict] = {}  # best checkpoints not written yet: path -> checkpoint, on the host
        self._last_stale = False
        self._written_at: float | None = None

    _last_step_of_last: int = -1

    # ------------------------------------------------------------------ pacing
    def setup(self, trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit":
            self._written_at = time.monotonic()  # the interval counts from the start of fit

    def _due(self, trainer=None) -> bool:
        return (self.write_interval == 0 or self._written_at is None
                or time.monotonic() - self._written_at >= self.write_interval * 60
                or (trainer is not None and _training_ends_here(trainer)))

    def _is_last(self, filepath: str) -> bool:
        return Path(filepath).name.startswith(self.CHECKPOINT_NAME_LAST)

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        if not self._due(trainer):
            self._last_global_step_saved = trainer.global_step
            self._last_checkpoint_saved = filepath
            if self._is_last(filepath):
                self._last_stale = True
            else:  # a copy of the weights now, written later
                weights_only = self.save_weights_only or self.best_weights_only
                checkpoint = trainer._checkpoint_connector.dump_checkpoint(weights_only)  # every rank takes part
                self._pending[filepath] = apply_to_collection(
                    checkpoint, torch.Tensor, lambda t: t.detach().to("cpu", copy=True)) \
                    if trainer.is_global_zero else {}
            return
        self._write_pending(trainer)
        self._write(trainer, filepath)
        if self._is_last(filepath):
            self._last_stale = False

    def _write(self, trainer, filepath: str) -> None:
        weights_only = self.save_weights_only or (self.best_weights_only and not self._is_last(filepath))
        trainer.save_checkpoint(filepath, weights_only)
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if self._is_last(filepath) or not self.save_last:  # a save point's last write restarts the interval
            self._written_at = time.monotonic()
        if trainer.is_global_zero:
            from weakref import proxy

            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))

    def _write_pending(self, trainer) -> None:
        """Writes the best checkpoints kept in memory: rank zero, which holds them, with no collective (it also runs
        when one rank failed)."""
        for filepath, checkpoint in list(self._pending.items()):
            if trainer.is_global_zero:
                trainer.strategy.checkpoint_io.save_checkpoint(checkpoint, filepath)
            del self._pending[filepath]

    def _remove_checkpoint(self, trainer, filepath: str) -> None:
        if self._pending.pop(filepath, None) is None:  # a superseded best never written needs no removal
            super()._remove_checkpoint(trainer, filepath)

    def flush(self, trainer, last: bool = True) -> None:
        """Writes what is pending now: the best checkpoint kept in memory and, with ``last``, a stale
        ``last.ckpt``."""
        self._write_pending(trainer)
        if last and self._last_stale and self.save_last:
            self._written_at = None  # due
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_end(self, trainer, pl_module) -> None:
        super().on_train_end(trainer, pl_module)
        self.flush(trainer)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        # the pending best is a copy taken at a good moment; the live state at a failure may not be
        self._write_pending(trainer)

    def _save_last_checkpoint(self, trainer, monitor_candidates) -> None:
        super()._save_last_checkpoint(trainer, monitor_candidates)
        if self.save_last:
            self._last_step_of_last = trainer.global_step

    def _refresh_last(self, trainer) -> None:
        if self.save_last and not self._should_skip_saving_checkpoint(trainer) \
                and self._last_step_of_last != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        every = self._every_n_train_steps
        if every >= 1 and trainer.global_step % every == 0 and not _epoch_ends_here(trainer):
            self._refresh_last(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)
