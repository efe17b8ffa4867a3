"""Layer freezing for every backbone family, through the plugins' ``layer_groups()`` (embeddings first, then the
blocks from input to output; the task head is never in a group, so it always trains).

- :class:`FreezeLayers`: freeze the embeddings and the bottom N blocks for the whole run (N < 0 counts from the
  top: ``-2`` trains only the top two blocks), the classic recipe for small data or fast steps.
- :class:`GradualUnfreezing`: start with every block frozen and, every K epochs, unfreeze the next block from the
  top with a discriminative learning rate (each lower block's rate multiplied by ``lr_decay``), added to the
  optimizer as new parameter groups (with and without weight decay) that follow the run's warm-up/decay schedule.
  A model without a head of its own (a language model whose output layer is tied to its input embeddings: GPT-2,
  T5, BART writing replies) trains its top block from the start instead.

Frozen blocks are put in eval mode (no dropout) and need no backward work: nothing below the lowest trainable block
requires a gradient, so autograd stops there. Trainable and total parameter counts are logged at every change
(console and ``params/trainable``, ``params/total``). Resuming restores the same frozen state, parameter groups and
learning rates.

Neither works with adapters (``model.peft``): peft already freezes every base weight and trains only the adapters
and the head, so there is no block left to freeze or unfreeze; the pair is refused in one line before training.
"""

from __future__ import annotations

from lightning.pytorch.callbacks import BaseFinetuning
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn

from cs_lightning.backbones.base import LayerGroup
from cs_lightning.errors import ConfigError
from cs_lightning.models.base import parameter_groups


def backbone_groups(pl_module) -> list[LayerGroup]:
    """The layer groups of the module's backbone, or a clear error when it has none."""
    backbone, model = getattr(pl_module, "backbone", None), getattr(pl_module, "model", None)
    if backbone is None or model is None:
        raise ConfigError("trainer.callbacks", f"{type(pl_module).__name__} has no backbone plugin to freeze",
                          "freezing callbacks work with cs-lightning models (IntentClassifier, ReplyGenerator)")
    try:
        groups = backbone.layer_groups(model)
    except NotImplementedError:
        groups = []
    if len(groups) < 2:
        raise ConfigError("trainer.callbacks", f"backbone '{backbone.name}' gives no layer groups to freeze",
                          "implement layer_groups() in the plugin, or remove the freezing callback")
    return groups


def _modules(groups) -> list[nn.Module]:
    return [m for g in groups for m in g.modules]


class _Freezing(BaseFinetuning):
    """Shared: eval mode for frozen groups, parameter counts, resume of the frozen state."""

    def __init__(self):
        super().__init__()
        self.frozen: list[LayerGroup] = []

    def setup(self, trainer, pl_module, stage: str) -> None:
        method = getattr(pl_module, "adapter_method", None)
        if method:
            raise ConfigError("trainer.callbacks", f"{type(self).__name__} cannot be combined with model.peft "
                              f"({method}): peft already freezes every base weight and trains only the adapters "
                              "and the head", "remove the freezing callback, or set model.peft: null to freeze "
                              "blocks of a fully fine-tuned model")
        super().setup(trainer, pl_module, stage)

    def _set_frozen(self, pl_module, frozen: list[LayerGroup]) -> None:
        self.frozen = frozen
        for module in _modules(frozen):
            self.freeze(module, train_bn=False)
            module.eval()  # no dropout in frozen blocks

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        for module in _modules(self.frozen):  # Lightning restores train mode after validation: keep these in eval
            module.eval()

    def log_counts(self, trainer, pl_module, why: str) -> None:
        trainable = sum(p.numel() for p in pl_module.parameters() if p.requires_grad)
        total = sum(p.numel() for p in pl_module.parameters())
        names = ", ".join(g.name for g in self.frozen) or "none"
        rank_zero_info(f"Freezing ({why}): {trainable:,} of {total:,} parameters trainable; frozen: {names}")
        if trainer.logger is not None and trainer.is_global_zero:
            trainer.logger.log_metrics({"params/trainable": trainable, "params/total": total}, step=trainer.global_step)


class FreezeLayers(_Freezing):
    """Freeze the embeddings and the bottom ``num_frozen_blocks`` blocks for the whole run.

    Args:
        num_frozen_blocks: blocks frozen above the embeddings; negative counts from the top (``-2``: train only the
            top two blocks, so one config fits a 6-block MiniLM and a 12-block BERT-base).
        freeze_embeddings: freeze the embeddings too.
    """

    def __init__(self, num_frozen_blocks: int = -2, freeze_embeddings: bool = True):
        super().__init__()
        self.num_frozen_blocks, self.freeze_embeddings = num_frozen_blocks, freeze_embeddings

    def freeze_before_training(self, pl_module) -> None:
        groups = backbone_groups(pl_module)
        embeddings, blocks = groups[0], groups[1:]
        n = self.num_frozen_blocks
        if abs(n) > len(blocks):
            raise ConfigError("FreezeLayers.num_frozen_blocks", f"{n} but the backbone has {len(blocks)} blocks",
                              f"use a value between -{len(blocks)} and {len(blocks)}")
        count = n if n >= 0 else len(blocks) + n
        self._set_frozen(pl_module, ([embeddings] if self.freeze_embeddings else []) + blocks[:count])

    def on_fit_start(self, trainer, pl_module) -> None:
        super().on_fit_start(trainer, pl_module)
        self.log_counts(trainer, pl_module, "start")

    def finetune_function(self, pl_module, epoch: int, optimizer) -> None:
        """Nothing changes during the run."""


class GradualUnfreezing(_Freezing):
    """Train the head first, then every ``unfreeze_every`` epochs unfreeze the next block from the top.

    Args:
        unfreeze_every: epochs between two unfreezing steps (the first step comes after this many epochs).
        lr_decay: learning-rate factor per block below the top: the k-th block unfrozen trains at
            ``learning_rate * lr_decay ** k`` (discriminative fine-tuning).
        unfreeze_embeddings: unfreeze the embeddings as the last step (else they stay frozen).
    """

    def __init__(self, unfreeze_every: int = 1, lr_decay: float = 0.8, unfreeze_embeddings: bool = True):
        super().__init__()
        if unfreeze_every < 1:
            raise ConfigError("GradualUnfreezing.unfreeze_every", f"must be at least 1, got {unfreeze_every}")
        if not 0 < lr_decay <= 1:
            raise ConfigError("GradualUnfreezing.lr_decay", f"must be in (0, 1], got {lr_decay}")
        self.unfreeze_every, self.lr_decay, self.unfreeze_embeddings = unfreeze_every, lr_decay, unfreeze_embeddings
        self.unfrozen = 0  # groups unfrozen so far, from the top

    def state_dict(self) -> dict:
        return {**super().state_dict(), "unfrozen": self.unfrozen}

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self.unfrozen = state_dict.get("unfrozen", 0)

    @staticmethod
    def _from_start(pl_module, groups: list[LayerGroup]) -> list[LayerGroup]:
        """The groups trained from the start: none, or the top block when the groups hold every parameter (no head
        of its own, as a language model whose output layer is tied to the input embeddings)."""
        grouped = {id(p) for g in groups for m in g.modules for p in m.parameters()}
        return [] if any(id(p) not in grouped for p in pl_module.parameters()) else groups[-1:]

    def _order(self, pl_module) -> list[LayerGroup]:
        """Groups in unfreezing order: the top block first, the embeddings last (if at all)."""
        groups = backbone_groups(pl_module)
        order = [g for g in groups[1:][::-1] if g not in self._from_start(pl_module, groups)]
        return order + [groups[0]] if self.unfreeze_embeddings else order

    def freeze_before_training(self, pl_module) -> None:
        groups = backbone_groups(pl_module)
        self._set_frozen(pl_module, [g for g in groups if g not in self._from_start(pl_module, groups)])

    def setup(self, trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        steps = len(self._order(pl_module))
        needed = steps * self.unfreeze_every + 1
        if trainer.max_epochs is not None and 0 < trainer.max_epochs < needed:
            rank_zero_warn(f"GradualUnfreezing: unfreezing all {steps} groups needs {needed} epochs but "
                           f"max_epochs is {trainer.max_epochs}; the lowest groups stay frozen.")

    def on_fit_start(self, trainer, pl_module) -> None:
        super().on_fit_start(trainer, pl_module)  # on resume: puts back the parameter groups added before
        order = self._order(pl_module)
        for group in order[: self.unfrozen]:  # on resume: the same groups trainable again
            for module in group.modules:
                self.make_trainable(module)
                module.train()
        groups = backbone_groups(pl_module)
        self.frozen = [g for g in groups if g not in order[: self.unfrozen] + self._from_start(pl_module, groups)]
        for scheduler in self._schedulers(trainer):
            self._extend_scheduler(scheduler, trainer.optimizers[0])
        self.log_counts(trainer, pl_module, "start" if not self.unfrozen else f"resumed, {self.unfrozen} unfrozen")

    @staticmethod
    def _schedulers(trainer) -> list:
        return [config.scheduler for config in trainer.lr_scheduler_configs]

    @staticmethod
    def _extend_scheduler(scheduler, optimizer) -> None:
        """Let the scheduler drive groups added after it was built (their own base rate, the same schedule)."""
        base_lrs = scheduler.base_lrs
        for group in optimizer.param_groups[len(base_lrs):]:
            base_lrs.append(group.get("initial_lr", group["lr"]))
        lambdas = getattr(scheduler, "lr_lambdas", None)
        if lambdas is not None:
            while len(lambdas) < len(base_lrs):
                lambdas.append(lambdas[0])

    def finetune_function(self, pl_module, epoch: int, optimizer) -> None:
        order = self._order(pl_module)
        due = min(len(order), epoch // self.unfreeze_every)
        trainer = pl_module.trainer
        schedulers = self._schedulers(trainer)
        while self.unfrozen < due:
            group = order[self.unfrozen]
            base_lr = pl_module.hparams.learning_rate * self.lr_decay ** (self.unfrozen + 1)
            for module in group.modules:
                self.make_trainable(module)
                module.train()
            named = [(n, p) for m in group.modules for n, p in m.named_parameters()]
            factor = 1.0
            if schedulers and scheduler_factor(schedulers[0]) is not None:
                factor = scheduler_factor(schedulers[0])
            for new in parameter_groups(named, pl_module.hparams.weight_decay):
                if new["params"]:
                    optimizer.add_param_group({**new, "lr": base_lr * factor, "initial_lr": base_lr})
            for scheduler in schedulers:
                self._extend_scheduler(scheduler, optimizer)
            self.unfrozen += 1
            self.frozen = [g for g in self.frozen if g.name != group.name]  # groups are rebuilt on each call
            rank_zero_info(f"GradualUnfreezing: epoch {epoch}: unfroze {group.name} at lr {base_lr:.3g}")
            self.log_counts(trainer, pl_module, f"epoch {epoch}")


def scheduler_factor(scheduler) -> float | None:
    """The current multiplier of a scheduler whose groups follow one schedule (lr / base lr of group 0)."""
    base = scheduler.base_lrs[0] if scheduler.base_lrs else 0
    lr = scheduler.optimizer.param_groups[0]["lr"]
    return lr / base if base else None
