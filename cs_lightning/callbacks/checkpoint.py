"""Checkpointing that keeps ``last.ckpt`` current, so ``--ckpt_path last`` resumes where training stopped."""

from __future__ import annotations

from lightning.pytorch.callbacks import ModelCheckpoint


def _epoch_ends_here(trainer) -> bool:
    """Whether the batch just trained is the epoch's last. Lightning 2.6 cannot resume from a checkpoint taken at
    that point (it skips the next epoch), so such saves wait for the epoch-end save that follows."""
    return bool(trainer.fit_loop.epoch_loop.batch_progress.is_last_batch)


class BestAndLastCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, except that ``last.ckpt`` is rewritten at every save point.

    Lightning 2.6 rewrites ``last.ckpt`` only when a new best checkpoint is saved, so after a few epochs without
    improvement ``--ckpt_path last`` would resume from an old epoch and redo (or lose) work. With
    ``every_n_train_steps`` it also defers every save to the next validation while the monitored metric is missing
    (the whole first epoch): here ``last.ckpt`` is written every N steps regardless, which is what a pre-emptible
    job needs.
    """

    _last_step_of_last: int = -1

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
