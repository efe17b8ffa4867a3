"""Task models (LightningModules) on top of the backbone plugins."""

from cs_lightning.models.base import BackboneModule
from cs_lightning.models.intent import IntentClassifier

__all__ = ["BackboneModule", "IntentClassifier"]
