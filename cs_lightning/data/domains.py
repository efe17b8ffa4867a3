"""One DataModule per business domain. Each trains on our bundled demo data (English or Chinese, by
``data.language``) unless given the user's own files."""

from __future__ import annotations

from cs_lightning.data.datamodule import DomainDataModule


class EcommerceDataModule(DomainDataModule):
    """Online-shop customer messages: orders, delivery, returns, refunds, payment, accounts, discounts."""

    domain = "ecommerce"


class FinanceDataModule(DomainDataModule):
    """Retail-bank customer messages: cards, transfers, balances, disputes, loans, fees, fraud."""

    domain = "finance"


class MedicalDataModule(DomainDataModule):
    """Clinic and online-consultation messages: appointments, results, prescriptions, billing, symptoms."""

    domain = "medical"
