"""Data: readers and validation (schema), conversation context (dialogue), batching, and DataModules."""

from cs_lightning.data.datamodule import CSDataModule, DialogueDataModule, DomainDataModule, IntentDataModule
from cs_lightning.data.domains import EcommerceDataModule, FinanceDataModule, MedicalDataModule

__all__ = ["CSDataModule", "IntentDataModule", "DialogueDataModule", "DomainDataModule", "EcommerceDataModule",
           "FinanceDataModule", "MedicalDataModule"]
