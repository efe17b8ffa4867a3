"""What every cs-lightning task model shares: the backbone from the plugin registry, its tokenizer, and the
optimizer recipe (AdamW without decay on biases and norms, linear warm-up then linear decay)."""

from __future__ import annotations

import contextlib

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from cs_lightning.errors import ConfigError
from cs_lightning.pretrained import not_found, resolve_model
from cs_lightning.registry import resolve_backbone


def missing_compiler(device: torch.device) -> str | None:
    """Why ``torch.compile`` cannot work here, or None. Inductor builds C++ kernels for CPUs and Triton builds a C
    launcher for GPUs; without a compiler both fail at the first step, deep inside torch."""
    import os
    import shutil

    if device.type == "cuda":
        found = [c for c in (os.environ.get("CC"), "gcc", "clang") if c and shutil.which(c)]  # what Triton looks for
        return None if found else "torch.compile on a GPU needs a C compiler (Triton), and none was found"
    if device.type != "cpu":
        return None
    try:
        from torch._inductor import exc
        from torch._inductor.cpp_builder import get_cpp_compiler
    except ImportError:  # a torch without these internals: let torch.compile speak for itself
        return None
    try:
        get_cpp_compiler()
    except exc.InvalidCxxCompiler:
        return "torch.compile on a CPU needs a C++ compiler (g++ or clang++), and none was found"
    return None


def warmup_linear_decay(warmup_steps: int, total_steps: int):
    """LR multiplier: 0 -> 1 over ``warmup_steps``, then 1 -> 0 at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor


def parameter_groups(named_parameters, weight_decay: float) -> list[dict]:
    """Two AdamW groups: matrices with ``weight_decay``, biases and norm weights (1-D) without."""
    decay, no_decay = [], []
    for _, param in named_parameters:
        if param.requires_grad:
            (no_decay if param.ndim < 2 else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class BackboneModule(pl.LightningModule):
    """Base LightningModule: builds ``self.model`` for ``task`` through the backbone plugin and configures AdamW.

    Subclasses call :meth:`build_backbone` in ``__init__`` after ``save_hyperparameters()``.
    """

    task: str = ""

    def build_backbone(self, backbone: str, model_name_or_path: str | None, pretrained: bool, tokenizer_path: str | None,
                       model_size: str, config_overrides: dict | None, trust_remote_code: bool = False,
                       model_type: str | None = None, **task_kwargs) -> None:
        source = resolve_model(model_name_or_path) if model_name_or_path else None
        self.backbone = resolve_backbone(backbone, source, model_type)  # as the data module does
        if trust_remote_code:
            rank_zero_warn("model.trust_remote_code is on: Python code shipped with the weights will run; use it "
                           "only for weights whose source you trust")
        if tokenizer_path is None and source is None:
            raise ConfigError("model.tokenizer_path", "no tokenizer",
                              "set model.model_name_or_path, or let the data module train one (cs-train links it)")
        self.tokenizer = self.backbone.load_tokenizer(tokenizer_path or source.path, trust_remote_code)
        chosen = self.backbone.describe()  # what `auto` (or a generic plugin's model type) came to
        chosen = "" if backbone == self.backbone.name and not self.backbone.generic else f" ({chosen})"
        if pretrained:
            rank_zero_info(f"Backbone '{backbone}'{chosen}: loading pretrained weights {source.describe()}")
        else:
            config = f"the '{model_size}' {self.backbone.name} config"
            what = f"the architecture of {source.describe()}" if source else config
            rank_zero_info(f"Backbone '{backbone}'{chosen}: random initialisation from {what}")
        try:
            self.model = self.backbone.load_model(self.task, source, pretrained, self.tokenizer, size=model_size,
                                                  config_overrides=config_overrides,
                                                  trust_remote_code=trust_remote_code, **task_kwargs)
            self.model.train()  # from_pretrained returns eval mode; Lightning keeps whatever mode it finds
        except OSError as err:  # the hub could not be reached or the files are incomplete
            raise not_found(model_name_or_path, [source.path, f"hub ({str(err).splitlines()[0][:120]})"]) from None

    def configure_model(self) -> None:
        """With ``compile: true``, the Hugging Face model's forward runs through ``torch.compile`` (the weights and
        their checkpoint names stay as they are). Static shapes: pad batches to length buckets
        (``data.pad_to_buckets``) or every new batch length compiles again."""
        if self.hparams.get("compile") and not hasattr(self.model, "_cs_eager_forward"):
            device = self.trainer.strategy.root_device if self._trainer is not None else self.device
            missing = missing_compiler(device)
            if missing:
                raise ConfigError("model.compile", missing, "install one (apt install build-essential), point the CXX "
                                  "or CC variable at it, or set model.compile: false")
            self.model._cs_eager_forward = self.model.forward
            self.model.forward = torch.compile(self.model.forward, dynamic=False)

    @contextlib.contextmanager
    def eager(self):
        """Runs the model uncompiled inside the block (generation changes shapes at every token)."""
        compiled = self.model.__dict__.get("forward")
        if compiled is None or not hasattr(self.model, "_cs_eager_forward"):
            yield
            return
        self.model.forward = self.model._cs_eager_forward
        try:
            yield
        finally:
            self.model.forward = compiled

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # which class to rebuild, for tools that only get a checkpoint (cs-export, cs-chat)
        checkpoint["cs_lightning"] = {"class_path": f"{type(self).__module__}.{type(self).__qualname__}",
                                      "task": self.task}

    def configure_optimizers(self):
        hp = self.hparams
        groups = parameter_groups(self.named_parameters(), hp.weight_decay)
        groups = [g for g in groups if g["params"]]
        on_gpu = all(p.is_cuda for g in groups for p in g["params"])
        clipping = bool(self.trainer.gradient_clip_val) if self._trainer is not None else False
        # fused AdamW is fastest on GPU, but Lightning's mixed-precision plugin refuses clipping with it
        impl = {"fused": True} if on_gpu and not clipping else {"foreach": True}
        optimizer = torch.optim.AdamW(groups, lr=hp.learning_rate, betas=(0.9, 0.999), eps=1e-8, **impl)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(total * hp.warmup_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_linear_decay(warmup, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    @staticmethod
    def model_inputs(batch: dict) -> dict:
        return {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
