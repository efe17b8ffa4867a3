"""Callbacks: artifacts written beside checkpoints (tokenizer, predictions)."""

from cs_lightning.callbacks.artifacts import PredictionWriter, SaveTokenizer

__all__ = ["PredictionWriter", "SaveTokenizer"]
