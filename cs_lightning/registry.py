"""Backbone discovery through the entry-point group ``cs_lightning.backbones``, and the one place a config's
``model.backbone`` becomes a plugin (:func:`resolve_backbone`, used by the model and the data module alike).

Only the plugin a config names is imported (``backbone: auto`` reads the installed plugins' model types); an
unknown name lists the installed plugins and their packages. The class is imported and checked once per process;
every call returns a new instance, and nothing here or in the callers changes a plugin after discovery: per-use
settings are arguments of its methods (``trust_remote_code``) or of its constructor (a generic plugin's
``model_type``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points

from cs_lightning.backbones.base import Backbone
from cs_lightning.errors import ConfigError
from cs_lightning.pretrained import ModelSource, not_found, read_model_type, resolve_model

GROUP = "cs_lightning.backbones"
AUTO = "auto"  # model.backbone: auto, the plugin made for the weights' model type, else the generic family
GENERIC = "generic"  # the entry point of the generic family (cs_lightning/backbones/generic.py)


@dataclass(frozen=True)
class PluginInfo:
    """An installed backbone plugin, before it is imported."""

    name: str
    target: str  # "module:Class"
    package: str
    version: str


def _entry_points() -> list[EntryPoint]:
    return sorted(entry_points(group=GROUP), key=lambda ep: ep.name)


def installed_backbones() -> list[PluginInfo]:
    """Every plugin registered under the entry-point group, with the distribution that provides it."""
    infos = []
    for ep in _entry_points():
        dist = ep.dist
        infos.append(PluginInfo(ep.name, ep.value, dist.metadata["Name"] if dist else "?", dist.version if dist else "?"))
    return infos


def get_backbone(name: str, **settings) -> Backbone:
    """A new instance of the plugin registered as ``name`` (imported and checked once per process); ``settings``
    go to its constructor (``model_type`` for a generic plugin)."""
    cls = backbone_class(name)
    backbone = cls(**settings)
    if not backbone.name:
        backbone.name = name
    return backbone


@functools.lru_cache(maxsize=None)
def backbone_class(name: str) -> type[Backbone]:
    """Import and check the plugin class registered as ``name``."""
    matches = [ep for ep in _entry_points() if ep.name == name]
    if not matches:
        listing = ", ".join(f"{p.name} ({p.package} {p.version})" for p in installed_backbones()) or "none"
        raise ConfigError("model.backbone", f"unknown backbone '{name}'; installed: {listing}",
                          f"use one of these names or {AUTO} (chosen by the model type), or pip install the package "
                          "that provides it")
    ep = matches[0]
    try:
        cls = ep.load()
    except Exception as err:  # a broken plugin must not look like our bug
        raise ConfigError("model.backbone", f"plugin '{name}' ({ep.value}) failed to import: {err}",
                          "reinstall or fix that package") from None
    if not (isinstance(cls, type) and issubclass(cls, Backbone)):
        raise ConfigError("model.backbone", f"plugin '{name}' ({ep.value}) is not a cs_lightning Backbone subclass",
                          "its entry point must name a class derived from cs_lightning.backbones.Backbone")
    missing = [attr for attr in ("model_types", "sizes", "supported_tasks") if not getattr(cls, attr, None)]
    if missing:
        raise ConfigError("model.backbone", f"plugin '{name}' ({ep.value}) does not define {', '.join(missing)}",
                          "see the Backbone docstring for the plugin contract")
    return cls


def _weights_type(source: ModelSource) -> str | None:
    """The model type of ``source``: its config.json, or the hub's copy when the weights come from the hub."""
    found = read_model_type(source)
    if found is None and not source.is_local:
        from transformers import AutoConfig

        try:
            found = AutoConfig.from_pretrained(source.path).model_type
        except OSError as err:  # the hub could not be reached: say so, naming the model, not "no model_type"
            raise not_found(source.name, ["Hugging Face cache", f"hub ({str(err).splitlines()[0][:120]})"]) from None
        except ValueError:  # a model type this transformers does not know
            return None
    return found


def resolve_backbone(name: str, source: ModelSource | str | None = None, model_type: str | None = None) -> Backbone:
    """The backbone plugin a config asks for: ``name``, or for ``auto`` the installed plugin whose ``model_types``
    hold the model type (weights first, else ``model_type``), else the generic family. A generic plugin gets the
    model type as its constructor argument.

    Args:
        name: ``model.backbone``: a plugin name or ``auto``.
        source: the weights (``model.model_name_or_path``), resolved or as written; read only when the choice
            depends on it.
        model_type: ``model.model_type``, for models built from scratch (the weights' own type wins and must agree).
    """
    cls = None if name == AUTO else backbone_class(name)
    if cls is not None and not cls.generic:
        if model_type is not None and model_type not in cls.model_types:
            raise ConfigError("model.model_type", f"backbone '{name}' takes {'/'.join(cls.model_types)}, not "
                                                  f"'{model_type}'", f"set model.backbone: {AUTO}, or leave "
                                                                     "model.model_type unset")
        return get_backbone(name)  # weights of another family are refused by the plugin, before they load
    if isinstance(source, str):
        source = resolve_model(source)
    found = _weights_type(source) if source is not None else None
    if found is not None and model_type is not None and found != model_type:
        raise ConfigError("model.model_type", f"'{model_type}', but {source.path} holds '{found}' weights",
                          "leave model.model_type unset (the weights decide), or point to weights of that type")
    wanted = found or model_type
    if wanted is None:
        where = f"{source.path} has no model_type in a config.json" if source is not None else "no weights to read it"
        raise ConfigError("model.model_type", f"backbone '{name}' needs the model type ({where})",
                          "set model.model_type (for example qwen2), or model.model_name_or_path to weights with a "
                          "config.json")
    if cls is not None:
        return get_backbone(name, model_type=wanted)
    for info in installed_backbones():
        try:
            candidate = backbone_class(info.name)
        except ConfigError:  # a broken plugin claims no model type; cs-backbones shows why
            continue
        if not candidate.generic and wanted in candidate.model_types:
            return get_backbone(info.name)
    generic = backbone_class(GENERIC)
    if wanted not in generic.model_types:
        key = "model.model_name_or_path" if found else "model.model_type"
        raise ConfigError(key, f"model type '{wanted}' is covered by no installed plugin and not by the generic "
                               f"family (covered: {', '.join(generic.model_types)})",
                          "use weights of a covered type, or add a backbone plugin for it (README, \"Add a backbone "
                          "plugin\")")
    return get_backbone(GENERIC, model_type=wanted)
