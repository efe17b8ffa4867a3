"""Built-in backbone plugins; found through the entry-point registry like any third-party plugin."""

from cs_lightning.backbones.base import Backbone, LayerGroup

__all__ = ["Backbone", "LayerGroup"]
