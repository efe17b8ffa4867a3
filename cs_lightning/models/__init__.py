"""Task models (LightningModules) on top of the backbone plugins."""

from cs_lightning.models.base import BackboneModule
from cs_lightning.models.intent import IntentClassifier
from cs_lightning.models.reply import ReplyGenerator

__all__ = ["BackboneModule", "IntentClassifier", "ReplyGenerator"]
