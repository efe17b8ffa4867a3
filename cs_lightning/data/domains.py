"""One DataModule per business domain and task. Each trains on our bundled demo data (English or Chinese, by
``data.language``) unless given the user's own files; the dialogue modules apply the domain's business rules unless
``rules_file`` names others."""

from __future__ import annotations

from cs_lightning.data.intent import IntentDataModule
from cs_lightning.data.reply import DialogueDataModule


class EcommerceDataModule(IntentDataModule):
    """Online-shop customer messages: orders, delivery, returns, refunds, payment, accounts, discounts."""

    domain = "ecommerce"


class FinanceDataModule(IntentDataModule):
    """Retail-bank customer messages: cards, transfers, balances, disputes, loans, fees, fraud."""

    domain = "finance"


class MedicalDataModule(IntentDataModule):
    """Clinic and online-consultation messages: appointments, results, prescriptions, billing, symptoms."""

    domain = "medical"


class EcommerceDialogueDataModule(DialogueDataModule):
    """Online-shop support dialogues for reply generation, with the shop's business rules."""

    domain = "ecommerce"


class FinanceDialogueDataModule(DialogueDataModule):
    """Retail-bank support dialogues for reply generation, with the bank's business rules."""

    domain = "finance"


class MedicalDialogueDataModule(DialogueDataModule):
    """Clinic support dialogues for reply generation, with the clinic's business rules."""

    domain = "medical"


#: the data module of each domain, by task
DOMAIN_MODULES = {
    "ecommerce": {"intent": EcommerceDataModule, "reply": EcommerceDialogueDataModule},
    "finance": {"intent": FinanceDataModule, "reply": FinanceDialogueDataModule},
    "medical": {"intent": MedicalDataModule, "reply": MedicalDialogueDataModule},
}
