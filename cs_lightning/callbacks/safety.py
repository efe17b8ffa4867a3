"""Never lose work: pre-emption checkpoints, a stop on non-finite loss, and final metrics written to a file."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from cs_lightning.callbacks.checkpoint import _epoch_ends_here
from cs_lightning.errors import CSLightningError
from cs_lightning.io import atomic_path


def last_checkpoint_path(trainer: pl.Trainer) -> Path | None:
    """Where the checkpoint callback keeps ``last.ckpt`` (what ``--ckpt_path last`` resumes from)."""
    ckpt = trainer.checkpoint_callback
    if ckpt is None or not getattr(ckpt, "dirpath", None):
        return None
    return Path(ckpt.dirpath) / f"{ckpt.CHECKPOINT_NAME_LAST}{ckpt.FILE_EXTENSION}"


class Preemption(Callback):
    """SIGTERM or SIGUSR1 (what SLURM sends before pre-emption or the time limit) ends training cleanly at the end of
    the current training batch, on every rank, after saving ``last.ckpt``; the requeued job continues with
    ``--ckpt_path last`` exactly where this one stopped (step, schedule, optimizer, frozen layers, data position).

    The handler only sets a flag; the flag is acted on at a training-batch boundary, the one place where Lightning
    resumes reliably (a checkpoint taken in the middle of a validation run does not resume correctly in Lightning
    2.6, so a signal during validation waits for it to finish).

    Several ranks: a signal that reaches only one of them stops them all, after the same batch, at most one batch
    after the signal. At the end of every batch each rank starts an asynchronous all-reduce of its flag on a small
    CPU (gloo) process group of its own, and reads the result of the previous batch's reduction, which finished
    while this batch trained (DDP's gradient all-reduce keeps the ranks in step anyway): the flag adds no wait to a
    step and never syncs with the GPU, and all ranks see a signal at the same batch boundary.
    """

    SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGUSR1") if hasattr(signal, name))

    def __init__(self):
        self._previous: dict = {}
        self.received: int | None = None
        self._group = None  # the CPU process group the ranks agree on the flag in
        self._reduction: tuple | None = None  # (work, flag) of the reduction started at the previous batch

    def _handler(self, signum, frame) -> None:
        self.received = signum

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.received = None
        self._reduction, self._group = None, None
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            self._group = torch.distributed.new_group(backend="gloo")  # every rank creates it, in the same order
        self._previous = {signum: signal.getsignal(signum) for signum in self.SIGNALS}  # restored at teardown

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # after Lightning installed its own SIGTERM handler (which would end a validation run half-way): replace it
        for signum in self.SIGNALS:
            try:
                signal.signal(signum, self._handler)
            except ValueError:  # not the main thread: leave signals alone
                self._previous = {}
                return

    def _any_rank_signalled(self) -> bool:
        """Whether any rank had the flag set one batch ago (that reduction has finished meanwhile), after starting
        this batch's reduction."""
        import torch.distributed as dist

        stop = False
        if self._reduction is not None:
            work, flag = self._reduction
            work.wait()
            stop = bool(flag.item())
        flag = torch.tensor([int(self.received is not None)])
        self._reduction = (dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group, async_op=True), flag)
        return stop

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._reduction is not None:  # every rank started as many reductions: finish the last one everywhere
            self._reduction[0].wait()
            self._reduction = None
        for signum, previous in self._previous.items():
            if previous is not None:
                signal.signal(signum, previous)
        self._previous = {}

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        if self._group is not None:
            stop = self._any_rank_signalled()
        else:
            stop = self.received is not None
        if not stop or _epoch_ends_here(trainer):  # at the epoch's last batch: stop after the epoch-end save
            return
        path = last_checkpoint_path(trainer)
        if path is not None:
            # the checkpoint callback's saved state must name this file as its last.ckpt, or the resumed run, finding
            # a last.ckpt it did not write, would save its own as last-v1.ckpt and leave this one behind
            trainer.checkpoint_callback.last_model_path = str(path)
            trainer.save_checkpoint(path, weights_only=False)  # every rank takes part; rank zero writes
        name = signal.Signals(self.received).name if self.received else "a signal on another rank"
        rank_zero_info(f"Stopped by {name} at step {trainer.global_step} (epoch {trainer.current_epoch})"
                       + (f"; saved {path}. Resume with the same command plus --ckpt_path last" if path else ""))
        # stop now, on every rank, with exit status 0: no epoch-end hook may overwrite last.ckpt with an "epoch
        # finished" state (Lightning's SIGTERMException is a SystemExit that its loops and launchers expect)
        raise SIGTERMException()


class NonFiniteGuard(Callback):
    """Stops training with a one-line error when the loss becomes NaN or infinite, before any non-finite weights reach
    a checkpoint, so the last good checkpoint stays the newest.

    No host-device sync per step: each step folds ``~isfinite(loss)`` into a flag on the device; the flag is read
    (and reduced over ranks) only at logging steps and before every checkpoint is written.
    """

    def __init__(self):
        self._bad: torch.Tensor | None = None
        self._step = 0
        self._first_step: torch.Tensor | None = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        self._step = trainer.global_step  # the step this batch trains (global_step moves on after the optimizer)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor):
            return
        bad = ~torch.isfinite(loss.detach()).all()
        if self._bad is None:
            self._bad = torch.zeros((), dtype=torch.bool, device=loss.device)
            self._first_step = torch.full((), -1, dtype=torch.long, device=loss.device)
        step = torch.full((), self._step, dtype=torch.long, device=loss.device)
        self._first_step = torch.where(bad & ~self._bad, step, self._first_step)
        self._bad = self._bad | bad
        if trainer.global_step % max(trainer.log_every_n_steps, 1) == 0:
            self.check(trainer)

    def check(self, trainer: pl.Trainer) -> None:
        """Reads the flag (one sync); raises if any rank saw a non-finite loss."""
        if self._bad is None:
            return
        bad = trainer.strategy.reduce(self._bad.float(), reduce_op="max") if trainer.world_size > 1 else self._bad
        if not bool(bad):
            return
        step = int(self._first_step)
        where = f"at step {step}" if step >= 0 else "on another rank"
        last = last_checkpoint_path(trainer)
        keep = f"; the last good checkpoint, {last}, is untouched" if last is not None and last.exists() else ""
        raise CSLightningError(f"training stopped: the loss became NaN or infinite {where} (epoch "
                               f"{trainer.current_epoch}){keep}. Lower model.learning_rate, set "
                               "trainer.gradient_clip_val (e.g. 1.0), or use bf16-mixed instead of 16-mixed")

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        self.check(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.check(trainer)


class MetricsFile(Callback):
    """Writes the final metrics of ``cs-train validate`` and ``test`` as JSON in the run folder
    (``validate_metrics.json``, ``test_metrics.json``), for scripts and CI gates that read numbers, not logs.
    Every value is already synchronised over ranks; rank zero writes."""

    def _write(self, trainer: pl.Trainer, stage: str) -> None:
        folder = Path(trainer.log_dir or ".")  # every rank asks: log_dir is a broadcast under DDP
        if not trainer.is_global_zero:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()
                   if getattr(v, "numel", lambda: 1)() == 1}
        path = folder / f"{stage}_metrics.json"
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(metrics, indent=1, sort_keys=True), encoding="utf-8")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "validate":
            self._write(trainer, "validate")

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write(trainer, "test")
