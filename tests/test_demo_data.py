"""The demo data we ship: enough of it, clean splits, and many phrasings per intent."""

import re
import unicodedata
from collections import Counter, defaultdict

import pytest

from cs_lightning.data import EcommerceDataModule, FinanceDataModule, MedicalDataModule
from cs_lightning.data.base import DEMO_ROOT
from cs_lightning.data.schema import read_intent_records

DOMAINS = {"ecommerce": EcommerceDataModule, "finance": FinanceDataModule, "medical": MedicalDataModule}
CASES = [(d, lang) for d in DOMAINS for lang in ("en", "zh")]


def normalise(text: str) -> str:
    text = "".join(c for c in unicodedata.normalize("NFKC", text.lower()) if not unicodedata.category(c).startswith("P"))
    return " ".join(text.split())


def opening(text: str, lang: str) -> str:
    norm = normalise(text)
    return " ".join(norm.split()[:3]) if lang == "en" else norm.replace(" ", "")[:3]


def load(domain, lang):
    return {split: read_intent_records(DEMO_ROOT / domain / lang / f"{split}.jsonl") for split in ("train", "val", "test")}


@pytest.mark.parametrize("domain, lang", CASES)
def test_size_and_labels(domain, lang):
    splits = load(domain, lang)
    total = sum(len(r) for r in splits.values())
    labels = {split: {r.label for r in recs} for split, recs in splits.items()}
    assert total >= 300
    assert len(labels["train"]) >= 8
    assert labels["val"] == labels["train"] == labels["test"]  # every intent in every split
    other = "zh" if lang == "en" else "en"
    assert labels["train"] == {r.label for r in load(domain, other)["train"]}  # same intents in both languages


@pytest.mark.parametrize("domain, lang", CASES)
def test_no_duplicates_and_no_leakage(domain, lang):
    splits = load(domain, lang)
    seen = {}
    for split, records in splits.items():
        for rec in records:
            key = normalise(rec.text)
            assert key not in seen, f"{domain}/{lang}: {rec.text!r} in {split} repeats one in {seen.get(key)}"
            seen[key] = split


@pytest.mark.parametrize("domain, lang", CASES)
def test_many_distinct_phrasings_per_intent(domain, lang):
    by_label = defaultdict(list)
    for records in load(domain, lang).values():
        for rec in records:
            by_label[rec.label].append(rec.text)
    for label, texts in by_label.items():
        openings = Counter(opening(t, lang) for t in texts)
        assert len(openings) / len(texts) >= 0.8, f"{domain}/{lang}/{label}: too many texts start alike"
        skeletons = Counter(re.sub(r"\d+", "#", normalise(t)) for t in texts)
        assert skeletons.most_common(1)[0][1] <= 3, f"{domain}/{lang}/{label}: template fills"
        if lang == "zh":
            assert all(re.search(r"[\u4e00-\u9fff]", t) for t in texts)


@pytest.mark.parametrize("domain", DOMAINS)
def test_domain_module_reads_its_demo_data(domain):
    dm = DOMAINS[domain](language="zh", backbone="bert")
    assert set(dm.records) == {"train", "val", "test"}
    assert len(dm.label_names) >= 8
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape[0] == 32 and batch["labels"].max() < len(dm.label_names)
    assert (batch["attention_mask"].sum(1) > 2).all()
