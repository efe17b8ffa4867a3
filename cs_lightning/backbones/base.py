"""The backbone plugin interface: everything cs-lightning needs to know about one model family.

A plugin is a :class:`Backbone` subclass registered under the entry-point group ``cs_lightning.backbones`` (see
``setup.cfg``); the entry-point name is what configs write as ``model.backbone``. The built-in ``bert``, ``gpt`` and
``t5`` are registered exactly like a third-party plugin. A family implements:

- ``model_types``: the Hugging Face ``model_type`` values its weights may have (weights of another family are refused
  with one line before anything loads);
- ``sizes``: config keyword arguments for models built from scratch (``tiny`` for tests, ``small``, ``base``);
- ``config_class``: the Hugging Face config class for those;
- ``tokenizer_kind``: which tokenizer :func:`~cs_lightning.tokenization.train_tokenizer` trains when none is given;
- ``layer_groups(model)``: the blocks from input (embeddings) to output, head excluded, so freezing works without
  knowing attribute names;
- optionally ``prepare_tokenizer`` / ``prepare_config`` to fix the family's quirks (GPT-2 has no pad token).

A plugin with ``generic = True`` (the built-in ``generic``, :mod:`cs_lightning.backbones.generic`) serves many model
types, one per instance: it takes the ``model_type`` as a constructor argument, and ``backbone: auto`` falls back to
it when no plugin made for the weights' model type is installed (:func:`cs_lightning.registry.resolve_backbone`).

Tasks: ``intent`` builds a sequence classifier (``AutoModelForSequenceClassification``), which exports to a plain
``text-classification`` pipeline; ``reply`` builds a generator, a causal LM (``reply_kind = "causal"``, GPT) or a
sequence-to-sequence model (``reply_kind = "seq2seq"``, T5). Families list the tasks they support in
``supported_tasks``.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar, NamedTuple

import torch
from torch import nn

from cs_lightning.errors import ConfigError
from cs_lightning.pretrained import ModelSource, read_model_type

log = logging.getLogger(__name__)

TASKS = ("intent", "reply")


class LayerGroup(NamedTuple):
    """One freezable unit of a backbone: a name for logs and the modules that make it up."""

    name: str
    modules: list[nn.Module]


class Backbone:
    """Base class of backbone plugins; see the module docstring for the contract."""

    name: ClassVar[str] = ""
    supported_tasks: ClassVar[tuple[str, ...]] = ("intent",)
    reply_kind: ClassVar[str | None] = None  # "causal" or "seq2seq" for families that generate replies
    model_types: ClassVar[tuple[str, ...]] = ()
    tokenizer_kind: ClassVar[str] = "wordpiece"
    config_class: ClassVar[type | None] = None
    sizes: ClassVar[dict[str, dict[str, Any]]] = {}
    generic: ClassVar[bool] = False  # serves any model type it covers, given as the constructor's ``model_type``

    # Per-use settings are arguments, never attributes: a plugin instance is shared state no method may change.
    # ``trust_remote_code`` runs Python code shipped with hub weights; off unless a config turns it on.

    # ----------------------------------------------------------------- tokenizer
    def load_tokenizer(self, path: str, trust_remote_code: bool = False):
        """Load the tokenizer at ``path`` (a folder or hub id) and fix the family's quirks."""
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as err:
            raise ConfigError("tokenizer", f"cannot load a tokenizer from '{path}': {str(err).splitlines()[0]}",
                              "give a folder with tokenizer files, or set model.pretrained: false to train one") from None
        return self.prepare_tokenizer(tokenizer)

    def prepare_tokenizer(self, tokenizer):
        """Fix family quirks of a loaded tokenizer (for example a missing pad token). Returns the tokenizer."""
        return tokenizer

    # ----------------------------------------------------------------- model
    def tiny_config(self) -> dict[str, Any]:
        """Config keyword arguments of a tiny random model, for offline tests."""
        return dict(self.sizes["tiny"])

    def describe(self) -> str:
        """How error messages name this backbone."""
        return f"backbone '{self.name}'"

    def new_config(self, size: str, tokenizer, **task_kwargs):
        """The Hugging Face config of a model built from scratch in ``size`` (``sizes[size]``)."""
        return self.config_class(**{**self.sizes[size], **task_kwargs})

    def check_source(self, source: ModelSource, key: str = "model.model_name_or_path") -> None:
        """Refuse weights of another family before loading them."""
        model_type = read_model_type(source)
        if model_type is not None and self.model_types and model_type not in self.model_types:
            raise ConfigError(key, f"{source.path} holds '{model_type}' weights, but backbone '{self.name}' takes "
                                   f"{'/'.join(self.model_types)}",
                              f"set model.backbone to the family of these weights, or point to {self.name} weights")

    def build_config(self, source: ModelSource | None, size: str, overrides: dict | None, tokenizer,
                     trust_remote_code: bool = False, **task_kwargs):
        """A Hugging Face config: from ``source`` when given, else from ``sizes[size]``; then ``overrides``."""
        from transformers import AutoConfig

        overrides = dict(overrides or {})
        if source is not None:
            config = AutoConfig.from_pretrained(source.path, trust_remote_code=trust_remote_code, **task_kwargs)
        else:
            if size not in self.sizes:
                raise ConfigError("model.model_size", f"unknown size {size!r} for {self.describe()}",
                                  f"choose one of {', '.join(self.sizes)}")
            config = self.new_config(size, tokenizer, **task_kwargs)
            config.vocab_size = len(tokenizer)
            for attr in ("pad_token_id", "eos_token_id", "bos_token_id"):  # the family defaults fit another vocab
                setattr(config, attr, getattr(tokenizer, attr, None))
        for key, value in overrides.items():
            if not hasattr(config, key):
                raise ConfigError(f"model.config_overrides.{key}", f"{type(config).__name__} has no such setting",
                                  "check the spelling against the model's config.json")
            setattr(config, key, value)
        return self.prepare_config(config, tokenizer)

    def prepare_config(self, config, tokenizer):
        """Copy special token ids from the tokenizer into the config."""
        for attr in ("pad_token_id", "eos_token_id", "bos_token_id"):
            value = getattr(tokenizer, attr, None)
            if value is not None and getattr(config, attr, None) is None:
                setattr(config, attr, value)
        return config

    def load_model(self, task: str, source: ModelSource | None, pretrained: bool, tokenizer, *,
                   labels: list[str] | None = None, size: str = "small", config_overrides: dict | None = None,
                   trust_remote_code: bool = False):
        """A Hugging Face model for ``task``.

        Args:
            task: one of ``supported_tasks``.
            source: where the weights (or, with ``pretrained=False``, the architecture) come from; ``None`` builds
                the ``size`` architecture from ``sizes``.
            pretrained: load the weights of ``source``; otherwise initialise randomly.
            tokenizer: the tokenizer the model will read (vocabulary size, special token ids).
            labels: label names, for ``intent``.
            size: architecture when there is no ``source``.
            config_overrides: config attributes to change (dropout, number of layers...).
            trust_remote_code: run Python code shipped with the weights (only for sources the user trusts).
        """
        import transformers

        if task not in self.supported_tasks:
            raise ConfigError("model.backbone", f"{self.describe()} does not support task '{task}'",
                              f"it supports: {', '.join(self.supported_tasks)}")
        if source is not None:
            self.check_source(source)
        if pretrained and source is None:
            raise ConfigError("model.model_name_or_path", "pretrained: true needs a model name or folder",
                              "set model.model_name_or_path, or model.pretrained: false")
        task_kwargs = {}
        if task == "intent":
            if not labels:
                raise ConfigError("model.labels", "no label names", "the data module gives them; check data.train_file")
            task_kwargs = dict(num_labels=len(labels), id2label=dict(enumerate(labels)),
                               label2id={name: i for i, name in enumerate(labels)})
        config = self.build_config(source, size, config_overrides, tokenizer, trust_remote_code, **task_kwargs)
        auto = {"intent": "AutoModelForSequenceClassification", "causal": "AutoModelForCausalLM",
                "seq2seq": "AutoModelForSeq2SeqLM"}[task if task == "intent" else self.reply_kind]
        auto = getattr(transformers, auto)
        # float32 whatever dtype the config names (transformers 5 would build Qwen's bf16 as bf16): the trainer's
        # precision decides what the weights become (32-true and the mixed modes keep float32 master weights,
        # *-true converts them), as for every other family
        model = (auto.from_pretrained(source.path, config=config, trust_remote_code=trust_remote_code,
                                      dtype=torch.float32)
                 if pretrained else auto.from_config(config, trust_remote_code=trust_remote_code, dtype=torch.float32))
        if model.get_input_embeddings().num_embeddings < len(tokenizer):
            model.resize_token_embeddings(len(tokenizer))
        return model

    # ----------------------------------------------------------------- freezing
    def layer_groups(self, model) -> list[LayerGroup]:
        """The backbone's blocks from input to output, head excluded."""
        raise NotImplementedError(f"backbone '{self.name}' gives no layer groups")
