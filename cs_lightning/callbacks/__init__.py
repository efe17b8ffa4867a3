"""Callbacks: checkpointing, artifacts written beside checkpoints (tokenizer, predictions)."""

from cs_lightning.callbacks.artifacts import PredictionWriter, SaveArtifacts
from cs_lightning.callbacks.checkpoint import BestAndLastCheckpoint

__all__ = ["BestAndLastCheckpoint", "PredictionWriter", "SaveArtifacts"]
