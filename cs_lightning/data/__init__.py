"""Data: readers and validation (schema, dialogue), tokenization (encoding), batching, and the DataModules: one per
task (:class:`IntentDataModule`, :class:`DialogueDataModule`) and one per business domain and task."""

from cs_lightning.data.base import CSDataModule
from cs_lightning.data.domains import (DOMAIN_MODULES, EcommerceDataModule, EcommerceDialogueDataModule,
                                       FinanceDataModule, FinanceDialogueDataModule, MedicalDataModule,
                                       MedicalDialogueDataModule)
from cs_lightning.data.intent import IntentDataModule
from cs_lightning.data.reply import DialogueDataModule

__all__ = ["CSDataModule", "IntentDataModule", "DialogueDataModule", "EcommerceDataModule", "FinanceDataModule",
           "MedicalDataModule", "EcommerceDialogueDataModule", "FinanceDialogueDataModule",
           "MedicalDialogueDataModule", "DOMAIN_MODULES"]
