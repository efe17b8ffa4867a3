"""The lines ``cs-train fit`` starts with (parameters and the memory they take) and the few it ends with: where the
best and last checkpoints are, how long it took, what next."""

from __future__ import annotations

import os
import time
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info

from cs_lightning.models.memory import estimate_memory


def _shown(path: str | os.PathLike) -> str:
    """A path relative to the working folder when it lies inside it: shorter to read and to paste."""
    relative = os.path.relpath(path)
    return str(path) if relative.startswith("..") else relative


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def sharded_over(trainer: pl.Trainer) -> int:
    """The devices a sharding strategy (FSDP, DeepSpeed, model parallel) splits the weights over; 1 for the others
    (one device, DDP: every device holds them all)."""
    from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy

    sharding = isinstance(trainer.strategy, (FSDPStrategy, DeepSpeedStrategy, ModelParallelStrategy))
    return max(1, trainer.world_size) if sharding else 1


class FitSummary(Callback):
    """Prints, on rank zero only, two lines when ``fit`` starts: trainable and total parameters, and an estimate of
    the memory that weights, gradients and AdamW state take in the run's precision
    (:func:`cs_lightning.models.memory.estimate_memory`; activations not included); and a short summary when ``fit``
    ends: the wall time, the best checkpoint with the monitored metric and its value, the last checkpoint, and the
    commands to run next (test, export, TensorBoard).

    A run without a checkpoint callback or without checkpoints on disk says so instead, a ``fast_dev_run`` names no
    checkpoint (it checks the loop; Lightning 2.6 still writes a ``last.ckpt`` of its one step), and a run stopped
    with Ctrl+C names the checkpoint it can resume from.

    Args:
        experiment: the run name, used for the ``cs-export`` folder (default: the checkpoint folder's parent's name).
        configs: the config files given to ``cs-train fit``, named in the ``cs-train test`` command when the run has
            no saved ``config.yaml`` of its own (LightningCLI saves one in the run folder).
    """

    def __init__(self, experiment: str | None = None, configs: list[str] | None = None):
        self.experiment = experiment
        self.configs = [str(c) for c in configs or []]
        self._start: float | None = None
        self._saved_config: str | None = None
        self._ended = False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._start = time.monotonic()
        # at setup: after the freezing callbacks' setup (cs-train adds this callback after the config's), before
        # a sharding strategy splits the parameters; the precision plugin converts the module later, and the
        # estimate counts each parameter in the dtype that conversion gives it
        estimate = estimate_memory(pl_module, trainer.precision)
        if estimate.total:  # a module that builds its layers in configure_model has none yet: nothing to say
            for line in estimate.lines(shards=sharded_over(trainer)):
                rank_zero_info(line)
        # found here, on every rank: trainer.log_dir broadcasts, so rank zero alone may not ask for it at the end
        from lightning.pytorch.cli import SaveConfigCallback

        saver = next((c for c in trainer.callbacks if isinstance(c, SaveConfigCallback)), None)
        if saver is not None and saver.save_to_log_dir:
            self._saved_config = os.path.join(trainer.log_dir or ".", saver.config_filename)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._ended = True

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # printed at teardown, not at on_fit_end: the Rich progress bar is stopped by its own teardown hook, which
        # runs before this one (cs-train adds it, or the config names it, earlier), so the summary comes last
        if stage == "fit" and self._ended and trainer.is_global_zero:
            print("\n".join(self.lines(trainer)), flush=True)
        self._ended = False

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        # Ctrl+C only: an error speaks for itself, and a pre-emption signal is reported by the Preemption callback
        if trainer.is_global_zero and isinstance(exception, KeyboardInterrupt):
            print("\n".join(self.lines(trainer, interrupted=True)), flush=True)

    # ------------------------------------------------------------------ the text
    def lines(self, trainer: pl.Trainer, interrupted: bool = False) -> list[str]:
        """The summary, one string per line."""
        elapsed = _duration(time.monotonic() - self._start) if self._start is not None else "?"
        epochs, steps = trainer.current_epoch, trainer.global_step
        head = "Fit interrupted after" if interrupted else "Fit finished in"
        lines = [f"{head} {elapsed} ({epochs} epoch{'s' * (epochs != 1)}, {steps} step{'s' * (steps != 1)})."]
        if trainer.fast_dev_run:  # Lightning may still write a last.ckpt of that one step: not one to use
            return lines + ["  fast_dev_run: the whole loop works; train without it for checkpoints to keep"]
        ckpt = trainer.checkpoint_callback
        best = getattr(ckpt, "best_model_path", "") or ""
        best = best if best and Path(best).is_file() else ""
        last = getattr(ckpt, "last_model_path", "") or ""
        last = last if last and Path(last).is_file() else ""
        if best:
            score = getattr(ckpt, "best_model_score", None)
            metric = f" ({ckpt.monitor} = {float(score):.4f})" if score is not None and ckpt.monitor else ""
            lines.append(f"  best checkpoint: {_shown(best)}{metric}")
        if last and last != best:
            lines.append(f"  last checkpoint: {_shown(last)}")
        if ckpt is None:
            lines.append("  no checkpoints: the run has no checkpoint callback")
        elif not best and not last:
            lines.append("  no checkpoint written")
        if interrupted:
            if last:
                lines.append("Resume: the same command plus --ckpt_path last")
            return lines
        lines += ["Next:"] + [f"  {command}" for command in self._next(trainer, best or last)]
        return lines if lines[-1] != "Next:" else lines[:-1]

    def _next(self, trainer: pl.Trainer, ckpt: str) -> list[str]:
        commands = []
        if ckpt:
            if self._saved_config and Path(self._saved_config).is_file():  # the run's own, every override included
                config = f" --config {_shown(self._saved_config)}"
            else:
                config = "".join(f" --config {c}" for c in self.configs) or " <the options given to fit>"
            # --ckpt_path best|last finds best*.ckpt / last*.ckpt in the checkpoint folder; other names go by path
            name = Path(ckpt).name
            which = "best" if name.startswith("best") else "last" if name.startswith("last") else _shown(ckpt)
            commands.append(f"cs-train test{config} --ckpt_path {which}")
            experiment = self.experiment or Path(ckpt).resolve().parent.parent.name
            commands.append(f"cs-export {_shown(ckpt)} exported/{experiment}")
        tensorboard = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        if tensorboard is not None:
            commands.append(f"tensorboard --logdir {_shown(tensorboard.save_dir)}")
        return commands
