"""Callbacks: checkpointing, layer freezing, artifacts written beside checkpoints (tokenizer, predictions)."""

from cs_lightning.callbacks.artifacts import ExportBest, HParamsSummary, PredictionWriter, SaveArtifacts
from cs_lightning.callbacks.checkpoint import BestAndLastCheckpoint
from cs_lightning.callbacks.freezing import FreezeLayers, GradualUnfreezing
from cs_lightning.callbacks.report import IntentReport
from cs_lightning.callbacks.rng import RandomState
from cs_lightning.callbacks.safety import MetricsFile, NonFiniteGuard, Preemption
from cs_lightning.callbacks.summary import FitSummary

__all__ = ["BestAndLastCheckpoint", "ExportBest", "FitSummary", "FreezeLayers", "GradualUnfreezing", "HParamsSummary",
           "IntentReport", "MetricsFile", "NonFiniteGuard", "PredictionWriter", "Preemption", "RandomState",
           "SaveArtifacts"]
