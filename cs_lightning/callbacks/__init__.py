"""Callbacks: checkpointing, layer freezing, artifacts written beside checkpoints (tokenizer, predictions)."""

from cs_lightning.callbacks.artifacts import HParamsSummary, PredictionWriter, SaveArtifacts
from cs_lightning.callbacks.checkpoint import BestAndLastCheckpoint
from cs_lightning.callbacks.freezing import FreezeLayers, GradualUnfreezing

__all__ = ["BestAndLastCheckpoint", "FreezeLayers", "GradualUnfreezing", "HParamsSummary", "PredictionWriter",
           "SaveArtifacts"]
