"""Every bad input gives one line naming the file, the line or field, the problem and the fix."""

import json

import pytest

from conftest import tiny_intent_files, write
from cs_lightning.data import IntentDataModule
from cs_lightning.data.schema import ColumnMap, read_intent_records
from cs_lightning.errors import ConfigError, DataError


def one_line(err) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_reads_csv_jsonl_and_json_array(tmp_path):
    csv_file = write(tmp_path / "a.csv", 'text,label\n"hello, world",greet\nbye,leave\n')
    jsonl = write(tmp_path / "a.jsonl", '{"text": "hello", "label": "greet"}\n\n{"text": "bye", "label": "leave"}\n')
    array = write(tmp_path / "a.json", '[\n {"text": "hello", "label": "greet"},\n {"text": "bye", "label": "leave"}\n]')
    for path in (csv_file, jsonl, array):
        records = read_intent_records(path)
        assert [(r.text, r.label) for r in records] == [("hello, world" if path == csv_file else "hello", "greet"),
                                                         ("bye", "leave")]
    assert [r.line for r in read_intent_records(array)] == [2, 3]
    assert [r.line for r in read_intent_records(jsonl)] == [1, 3]


def test_column_aliases_and_mapping(tmp_path):
    banking = write(tmp_path / "b.csv", "text,category\nI lost my card,lost_card\n")
    assert read_intent_records(banking)[0].label == "lost_card"
    kuake = write(tmp_path / "k.json", '[{"id": "s1", "query": "丰胸的方法有哪些", "label": "治疗方案"}]')
    rec = read_intent_records(kuake)[0]
    assert (rec.id, rec.text, rec.label) == ("s1", "丰胸的方法有哪些", "治疗方案")
    custom = write(tmp_path / "c.csv", "msg,tag\nhi,greet\n")
    assert read_intent_records(custom, ColumnMap(text="msg", label="tag"))[0].label == "greet"


def test_history_is_parsed_with_roles(tmp_path):
    path = write(tmp_path / "h.jsonl", json.dumps({"text": "yes the blue one", "label": "return_item",
                                                    "history": ["I want to return a shirt", "Which colour?"]}) + "\n")
    rec = read_intent_records(path)[0]
    assert [(t.role, t.text) for t in rec.history] == [("user", "I want to return a shirt"), ("agent", "Which colour?")]


@pytest.mark.parametrize("content, expected", [
    ("text,label\nhello,greet,extra\n", "x.csv:2: expected 2 fields (text,label) but found 3"),
    ('text,label\nhello,greet\n"unterminated,greet\nbye,leave\n', "x.csv:3: malformed CSV"),
    ("text,label\n   ,greet\n", "x.csv:2: text: empty text"),
    ("text,label\nhello,\n", "x.csv:2: label: empty label"),
    ("message,label\nhello,greet\n", "x.csv:2: no 'text' column (found: message"),
    ("", "x.csv: file is empty"),
    ("text,label\n", "x.csv: no records"),
])
def test_bad_csv(tmp_path, content, expected):
    path = write(tmp_path / "x.csv", content)
    with pytest.raises(DataError) as err:
        read_intent_records(path, ColumnMap(text="text") if "message" in content else None, labelled=True)
    message = one_line(err)
    assert message.startswith(str(path.parent / expected)), message
    assert "(" in message and message.endswith(")")  # a fix is given


@pytest.mark.parametrize("content, expected", [
    ('{"text": "a", "label": "x"}\n{"text": "b", "label": \n', "x.jsonl:2: not valid JSON"),
    ('{"text": "a", "label": "x"}\n["b", "y"]\n', "x.jsonl:2: a JSON list where an object was expected"),
    ('{"text": "", "label": "x"}\n', "x.jsonl:1: text: empty text"),
    ('{"text": 5, "label": "x"}\n', "x.jsonl:1: text: expected a string"),
    ('{"text": "a", "label": "x", "history": [{"role": "bot", "text": "hi"}]}\n', "x.jsonl:1: history: turn 1 has role 'bot'"),
])
def test_bad_jsonl(tmp_path, content, expected):
    path = write(tmp_path / "x.jsonl", content)
    with pytest.raises(DataError) as err:
        read_intent_records(path)
    assert one_line(err).startswith(str(tmp_path / expected))


def test_non_utf8_file_names_line(tmp_path):
    path = write(tmp_path / "gbk.csv", "text,label\nhello,greet\n我的快递,delivery\n", encoding="gbk")
    with pytest.raises(DataError) as err:
        read_intent_records(path)
    message = one_line(err)
    assert message.startswith(f"{path}:3: not valid UTF-8") and "UTF-8" in message.split("(")[-1]


def test_missing_file_and_unknown_type(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_intent_records(tmp_path / "nope.csv")
    with pytest.raises(DataError, match="unknown file type '.xlsx'"):
        read_intent_records(write(tmp_path / "a.xlsx", "x"))


def test_unknown_label_in_val_is_reported_before_training(tmp_path):
    files = tiny_intent_files(tmp_path)
    write(files["val"], "text,label\nwhere is my parcel,delivery\nplease cancel,cancel_order\n")
    with pytest.raises(DataError) as err:
        IntentDataModule(train_file=str(files["train"]), val_file=str(files["val"]), backbone="bert")
    message = one_line(err)
    assert message.startswith(f"{files['val']}:3: label: label 'cancel_order' never appears in the training data")


def test_predict_file_without_labels_is_accepted(tmp_path):
    files = tiny_intent_files(tmp_path)
    predict = write(tmp_path / "predict.jsonl", '{"id": "a1", "text": "where is my parcel"}\n')
    dm = IntentDataModule(train_file=str(files["train"]), predict_file=str(predict), backbone="bert")
    assert [r.id for r in dm.records["predict"]] == ["a1"]
    assert dm.records["predict"][0].label is None


def test_bad_settings_are_config_errors(tmp_path):
    files = tiny_intent_files(tmp_path)
    with pytest.raises(ConfigError, match="data.language: unknown language 'fr'"):
        IntentDataModule(train_file=str(files["train"]), language="fr")
    with pytest.raises(ConfigError, match="data.train_file: no data files given"):
        IntentDataModule()
