"""Importers of public dialogue datasets, on one real file each (skipped when ../shared is absent)."""

import json
import zipfile

import pytest

from conftest import shared_file, write
from cs_lightning.data.dialogue import read_dialogues, reply_examples
from cs_lightning.commands.data import main as cs_data
from cs_lightning.errors import DataError


def run_import(fmt, src, out):
    with pytest.raises(SystemExit) as exit_:
        cs_data(["import", "--format", fmt, str(src), str(out)])
    return exit_.value.code


def test_sgd_file_imports_with_services_and_intents(tmp_path):
    src = shared_file("sgd_subset", "train", "dialogues_032.json")
    out = tmp_path / "sgd.jsonl"
    assert run_import("sgd", src, out) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 128
    first = next(r for r in rows if r["id"] == "32_00011")
    assert first["domain"] == "Banks_1" and first["intent"] == "CheckBalance"
    assert first["turns"][:2] == [{"role": "user", "text": "What's my balance?"},
                                  {"role": "agent", "text": "In checking or savings?"}]
    dialogues = read_dialogues(out)  # the output is valid input for training
    assert len(reply_examples(dialogues)) == sum(t["role"] == "agent" for r in rows for t in r["turns"])


def test_sgd_folder_reads_as_is():
    dialogues = read_dialogues(shared_file("sgd_subset", "dev"), file_format="sgd")
    assert len(dialogues) == 256 and len(reply_examples(dialogues)) == 1768


def test_crosswoz_zip_imports_with_domains(tmp_path):
    src = shared_file("crosswoz", "val.json.zip")
    out = tmp_path / "crosswoz.jsonl"
    assert run_import("crosswoz", src, out) == 0
    rows = {r["id"]: r for r in map(json.loads, out.read_text(encoding="utf-8").splitlines())}
    assert len(rows) == 500
    assert sum(len(r["turns"]) for r in rows.values()) == 8458
    first = rows["11290"]
    assert first["turns"][0]["role"] == "user" and first["turns"][0]["text"].startswith("你好，我想找家人均消费")
    assert first["domain"].split("+")[0] == "餐馆"


def test_importer_errors_are_one_line(tmp_path, capsys):
    bad = write(tmp_path / "dialogues_001.json", "[{\"dialogue_id\": \"x\"}]")
    assert run_import("sgd", bad, tmp_path / "o.jsonl") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "dialogue 0: missing field" in err[0]
    not_zip = write(tmp_path / "val.json.zip", "plain text")
    with pytest.raises(DataError, match="not a valid zip file"):
        read_dialogues(not_zip, file_format="crosswoz")


def test_crosswoz_small_handmade_zip(tmp_path):
    data = {"7": {"type": "单领域", "messages": [
        {"content": "有什么推荐的酒店吗？", "role": "usr", "dialog_act": [["Request", "酒店", "名称", ""]]},
        {"content": "推荐您去北京饭店。", "role": "sys", "dialog_act": [["Recommend", "酒店", "名称", "北京饭店"]]}]}}
    path = tmp_path / "tiny.json.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("tiny.json", json.dumps(data, ensure_ascii=False))
    [dialogue] = read_dialogues(path, file_format="crosswoz")
    assert dialogue.domain == "酒店" and [t.role for t in dialogue.turns] == ["user", "agent"]


def test_validate_reports_every_error_labels_duplicates_and_leakage(tmp_path, capsys):
    train = write(tmp_path / "train.csv", "text,label\nwhere is my parcel,delivery\n,delivery\nrefund please,refund\n"
                                          "Where is  my parcel,delivery\nhello,greet,extra\nreset password,login\n")
    test = write(tmp_path / "test.jsonl", '{"text": "refund please", "label": "refund"}\n{"text": "bye", "label": ""}\n')
    with pytest.raises(SystemExit) as exit_:
        cs_data(["validate", str(train), str(test)])
    assert exit_.value.code == 1
    out = capsys.readouterr().out
    assert f"error: {train}:3: text: empty text" in out
    assert f"error: {train}:6: expected 2 fields" in out
    assert f"error: {test}:2: label: empty label" in out
    assert "duplicate: line 5 repeats line 2" in out
    assert "labels (3): delivery 2, refund 1, login 1" in out
    assert "leakage: 1 text(s) in both" in out


def test_validate_clean_file_exits_zero(tmp_path, capsys):
    good = write(tmp_path / "good.jsonl", '{"text": "hello", "label": "greet"}\n{"text": "bye", "label": "leave"}\n')
    with pytest.raises(SystemExit) as exit_:
        cs_data(["validate", str(good)])
    assert exit_.value.code == 0
    assert "0 error(s)" in capsys.readouterr().out


def test_validate_dialogues_reports_every_error(tmp_path, capsys):
    good = '{"id": "%s", "turns": [{"role": "user", "text": "hi"}, {"role": "agent", "text": "hello"}]}'
    path = write(tmp_path / "dialogues.jsonl", "\n".join([
        good % "a",
        '{"id": "b", "turns": [{"role": "bot", "text": "hi"}]}',
        "not json",
        '{"id": "c", "turns": [{"role": "user", "text": "  "}]}',
        good % "a",
        good % "d",
    ]) + "\n")
    with pytest.raises(SystemExit) as exit_:
        cs_data(["validate", "--task", "dialogue", str(path)])
    assert exit_.value.code == 1
    out = capsys.readouterr().out
    assert "2 dialogues, 4 error(s)" in out
    for line, problem in [(2, "unknown role 'bot'"), (3, "not valid JSON"), (4, "turn 1 is empty"),
                          (5, "repeats the dialogue on line 1")]:
        assert f"{path}:{line}:" in out and problem in out
