"""Backbone discovery through the entry-point group ``cs_lightning.backbones``.

Only the plugin a config names is imported; an unknown name lists the installed plugins and their packages. The
class is imported and checked once per process; every call returns a new instance, and nothing here or in the
callers changes a plugin after discovery: per-use settings (``trust_remote_code``) are arguments of its methods.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points

from cs_lightning.backbones.base import Backbone
from cs_lightning.errors import ConfigError

GROUP = "cs_lightning.backbones"


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


def get_backbone(name: str) -> Backbone:
    """A new instance of the plugin registered as ``name`` (imported and checked once per process)."""
    cls = backbone_class(name)
    backbone = cls()
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
                          "use one of these names, or pip install the package that provides it")
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
