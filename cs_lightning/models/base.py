"""What every cs-lightning task model shares: the backbone from the plugin registry, its tokenizer, adapters
(``model.peft``, :mod:`cs_lightning.models.adapters`), and the optimizer recipe (AdamW without decay on biases and
norms, linear warm-up then linear decay)."""

from __future__ import annotations

import contextlib

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from cs_lightning.errors import ConfigError
from cs_lightning.models.adapters import (adapter_settings, apply_adapters, base_fingerprint, base_seed,
                                          check_checkpoint, head_modules)
from cs_lightning.pretrained import not_found, resolve_model
from cs_lightning.prompts import SPECIAL_MARKERS
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
    """Base LightningModule: builds ``self.model`` for ``task`` through the backbone plugin, with adapters when
    ``peft`` is set, and configures AdamW.

    Subclasses call :meth:`build_backbone` in ``__init__`` after ``save_hyperparameters()``.
    """

    task: str = ""
    #: with adapters: ``{"method", "base": {where the base weights come from, "sha256"}}``, saved in checkpoints
    adapters: dict | None = None

    def build_backbone(self, backbone: str, model_name_or_path: str | None, pretrained: bool, tokenizer_path: str | None,
                       model_size: str, config_overrides: dict | None, trust_remote_code: bool = False,
                       model_type: str | None = None, peft: dict | None = None, gradient_checkpointing: bool = False,
                       **task_kwargs) -> None:
        settings = adapter_settings(peft)  # a wrong setting is one line before any weights load
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
            # adapter checkpoints hold no base weights: any the source lacks must come out the same when rebuilt
            with base_seed() if settings else contextlib.nullcontext():
                self.model = self.backbone.load_model(self.task, source, pretrained, self.tokenizer, size=model_size,
                                                      config_overrides=config_overrides,
                                                      trust_remote_code=trust_remote_code, **task_kwargs)
            self.model.train()  # from_pretrained returns eval mode; Lightning keeps whatever mode it finds
        except OSError as err:  # the hub could not be reached or the files are incomplete
            raise not_found(model_name_or_path, [source.path, f"hub ({str(err).splitlines()[0][:120]})"]) from None
        if gradient_checkpointing:
            self._checkpoint_activations(adapters=settings is not None)
        if settings is not None:
            base = {"model_name_or_path": model_name_or_path, "pretrained": pretrained, "backbone": backbone,
                    "model_type": model_type, "model_size": None if pretrained else model_size}
            self._add_adapters(settings, base)

    def _checkpoint_activations(self, adapters: bool) -> None:
        """The Hugging Face model's gradient (activation) checkpointing: blocks recompute their activations in the
        backward pass instead of keeping them."""
        model = self.model
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        try:
            enable()
        except ValueError as err:  # an architecture without it
            raise ConfigError("model.gradient_checkpointing", str(err).splitlines()[0][:160],
                              "set model.gradient_checkpointing: false") from None
        if adapters and not getattr(model, "_require_grads_hooks", None):
            # frozen embeddings give the first checkpointed block an input without grad, and no gradient would reach
            # the adapters inside it (what peft asks for)
            model.enable_input_require_grads()

    def _add_adapters(self, settings: dict, base: dict) -> None:
        """Wraps ``self.model`` in peft's model: frozen base, trainable adapters, head and speaker-marker rows."""
        head = head_modules(self.model) if self.task == "intent" else []
        vocab = self.tokenizer.get_vocab()
        markers = [vocab[m] for m in SPECIAL_MARKERS.values() if m in vocab] if self.task == "reply" else []
        base["sha256"] = base_fingerprint(self.model, skip=head)
        kind = "intent" if self.task == "intent" else self.backbone.reply_kind
        self.model, targets = apply_adapters(self.model, settings, kind, head, markers)
        self.adapters = {"method": settings["method"], "base": base}
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.model.parameters())
        rank = f" r={settings['r']}" if "r" in settings else ""
        rank_zero_info(f"Adapters: {settings['method']}{rank} on {', '.join(targets)}"
                       + (f"; head trained in full: {', '.join(head)}" if head else "")
                       + f"; {trainable:,} of {total:,} parameters train")

    @property
    def adapter_method(self) -> str | None:
        """``lora``, ``dora`` or ``ia3`` when the model trains adapters, else None (full fine-tuning)."""
        return self.adapters["method"] if self.adapters else None

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
        if self.adapters:  # where the base weights come from, and their hash (state_dict leaves them out)
            checkpoint["cs_lightning"]["adapters"] = self.adapters

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        check_checkpoint((checkpoint.get("cs_lightning") or {}).get("adapters"), self.adapters)

    def state_dict(self, *args, **kwargs):
        """With adapters, what trains (adapters, head, token rows) and what is not the Hugging Face model: the frozen
        base weights come from their source, so checkpoints stay small."""
        state = super().state_dict(*args, **kwargs)
        if not self.adapters:
            return state
        prefix = f"{kwargs.get('prefix', '')}model."
        trainable = {f"{prefix}{name}" for name, p in self.model.named_parameters() if p.requires_grad}
        for key in [k for k in state if k.startswith(prefix) and k not in trainable]:
            del state[key]  # in place: a parent module's state_dict reads the dict it passed in, not what we return
        return state

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """With adapters, the frozen base weights are not expected: they are already in place (hash checked by
        :meth:`on_load_checkpoint`); every other weight is, as strictly as asked."""
        if not self.adapters:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        expected = set(self.state_dict())
        missing = [k for k in result.missing_keys if k in expected]
        if strict and (missing or result.unexpected_keys):
            keys = missing or result.unexpected_keys
            raise ConfigError("model.peft", f"the checkpoint's adapter weights do not fit this model ({len(keys)} "
                                            f"{'missing' if missing else 'unexpected'}, such as {keys[0]})",
                              "load it with the model.peft settings it was trained with")
        return type(result)(missing, result.unexpected_keys)

    def configure_optimizers(self):
        hp = self.hparams
        groups = parameter_groups(self.named_parameters(), hp.weight_decay)
        groups = [g for g in groups if g["params"]]
        devices = {p.device.type for g in groups for p in g["params"]}
        clipping = bool(self.trainer.gradient_clip_val) if self._trainer is not None else False
        # fused AdamW is the fastest on GPU and on CPU (MiniLM's 22.7M weights on 2 cores: 8 ms a step against 54 ms
        # for foreach, a fifth of the main job's time), but Lightning's mixed-precision plugin refuses clipping
        # with it
        impl = {"fused": True} if devices in ({"cuda"}, {"cpu"}) and not clipping else {"foreach": True}
        optimizer = torch.optim.AdamW(groups, lr=hp.learning_rate, betas=(0.9, 0.999), eps=1e-8, **impl)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(total * hp.warmup_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_linear_decay(warmup, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    @staticmethod
    def model_inputs(batch: dict) -> dict:
        return {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
