"""The public datasets in ../shared/data load as they are (skipped when the folder is absent)."""

from collections import Counter

from conftest import shared_file
from cs_lightning.data import FinanceDataModule, MedicalDataModule
from cs_lightning.data.schema import read_intent_records


def test_banking77_csv_loads_as_is():
    train = read_intent_records(shared_file("banking77", "train.csv"))
    test = read_intent_records(shared_file("banking77", "test.csv"))
    assert (len(train), len(test)) == (10003, 3080)
    assert len({r.label for r in train}) == 77 and {r.label for r in test} == {r.label for r in train}


def test_banking77_through_the_finance_module_keeps_test_csv_as_test():
    dm = FinanceDataModule(train_file=str(shared_file("banking77", "train.csv")),
                           test_file=str(shared_file("banking77", "test.csv")), label_column="category",
                           val_fraction=0.05, backbone="bert")
    assert len(dm.label_names) == 77
    assert len(dm.records["test"]) == 3080
    assert len(dm.records["train"]) + len(dm.records["val"]) == 10003
    assert 480 <= len(dm.records["val"]) <= 540 and len({r.label for r in dm.records["val"]}) == 77


def test_kuake_qic_json_array_loads_as_is():
    path = shared_file("kuake_qic", "KUAKE-QIC_train.json")
    records = read_intent_records(path)
    assert len(records) == 6931 and records[0].id == "s1"
    counts = Counter(r.label for r in records)
    assert len(counts) == 11 and counts["治疗方案"] == 1750
    unlabelled = read_intent_records(shared_file("kuake_qic", "KUAKE-QIC_test.json"), labelled=False)
    assert len(unlabelled) == 1994 and unlabelled[0].label is None
    dm = MedicalDataModule(train_file=str(path), language="zh", backbone="bert")
    assert len(dm.label_names) == 11
