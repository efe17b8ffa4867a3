"""cs-export's metadata file (what serving reads, old exports included) and the ONNX export with its self-check."""

import json
import logging
import shutil

import pytest
import torch

from cs_lightning import __version__
from cs_lightning.checkpoints import load_module
from cs_lightning.commands.export import main as cs_export
from cs_lightning.export import FORMAT_VERSION, export, read_export

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

TEXTS = ["where is my parcel", "forgot my password", "refund please", "my parcel is lost", "reset password",
         "money back for my order"]


def onnx_labels(folder, info, texts):
    """Labels of ``texts`` from the ONNX file alone, as a server would compute them (onnxruntime, tokenizer)."""
    import onnxruntime
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    session = onnxruntime.InferenceSession(str(folder / info["onnx"]["file"]), providers=["CPUExecutionProvider"])
    enc = tok(texts, padding=True, truncation=True, max_length=info["max_length"], return_tensors="np")
    logits = session.run(["logits"], {k: enc[k].astype("int64") for k in info["onnx"]["inputs"]})[0]
    probs = torch.from_numpy(logits / info["temperature"]).softmax(-1)
    return [info["labels"][i] for i in probs.argmax(-1).tolist()]


def test_intent_metadata_is_written_and_read_back(intent_checkpoint, tmp_path):
    out = export(intent_checkpoint, tmp_path / "hf")
    info = read_export(out)
    written = json.loads((out / "cs_lightning.json").read_text())
    assert info == written  # a current export needs no defaults
    assert info["format_version"] == FORMAT_VERSION and info["cs_lightning_version"] == __version__
    assert info["task"] == "intent" and info["labels"] == ["delivery", "login", "refund"]
    assert info["temperature"] == 1.0 and info["calibration"] is None  # 3 validation examples: nothing fitted
    assert info["oos_label"] is None and info["oos_threshold"] is None and info["onnx"] is None
    assert info["max_length"] == 128


def test_reply_metadata_is_written_and_read_back(reply_checkpoint, tmp_path):
    info = read_export(export(reply_checkpoint, tmp_path / "hf"))
    assert info["format_version"] == FORMAT_VERSION and info["task"] == "reply"
    assert info["generation"] == {"max_new_tokens": 8, "num_beams": 1, "no_repeat_ngram_size": 3,
                                  "repetition_penalty": 1.0, "do_sample": False}
    assert "prompt_format" in info and "system_prompt" in info and "rules" in info


def test_an_old_export_still_loads_with_defaults_and_a_note(intent_checkpoint, tmp_path, caplog):
    out = export(intent_checkpoint, tmp_path / "hf")
    old = {k: v for k, v in json.loads((out / "cs_lightning.json").read_text()).items()
           if k in ("task", "backbone", "exported_from")}  # what format 1 held
    (out / "cs_lightning.json").write_text(json.dumps(old))
    with caplog.at_level(logging.WARNING, logger="cs_lightning.export"):
        info = read_export(out)
    assert info["format_version"] == 1 and info["labels"] == ["delivery", "login", "refund"]
    assert info["temperature"] == 1.0 and info["calibration"] is None and info["onnx"] is None
    notes = [r.getMessage() for r in caplog.records if r.name == "cs_lightning.export"]
    assert len(notes) == 1 and "\n" not in notes[0] and "defaults" in notes[0]
    (out / "cs_lightning.json").unlink()  # a plain Hugging Face folder
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cs_lightning.export"):
        info = read_export(out)
    assert info["task"] == "intent" and info["labels"] == ["delivery", "login", "refund"]
    assert len([r for r in caplog.records if r.name == "cs_lightning.export"]) == 1


def test_onnx_export_predicts_what_the_checkpoint_predicts(intent_checkpoint, tmp_path, capsys):
    module, _ = load_module(intent_checkpoint)
    expected = module.predict_texts(TEXTS)
    cs_export([str(intent_checkpoint), str(tmp_path / "onnx"), "--onnx"])
    assert "label agreement 1.0000" in capsys.readouterr().out
    info = read_export(tmp_path / "onnx")
    onnx = info["onnx"]
    assert onnx["file"] == "model.onnx" and onnx["quantize"] is None and onnx["opset"] >= 17
    check = onnx["check"]
    assert check["split"] == "val" and check["examples"] == 3  # the fixture's validation file
    assert check["label_agreement"] == 1.0 and check["max_abs_logit_diff"] <= check["tolerance"]["max_abs_logit_diff"]
    assert onnx_labels(tmp_path / "onnx", info, TEXTS) == expected
    assert (tmp_path / "onnx" / "model.safetensors").exists()  # the Hugging Face folder as before


def test_int8_export_passes_its_check(intent_checkpoint, tmp_path):
    module, _ = load_module(intent_checkpoint)
    sample = tmp_path / "sample.csv"
    sample.write_text("text\n" + "\n".join(TEXTS) + "\n")
    cs_export([str(intent_checkpoint), str(tmp_path / "q"), "--onnx", "--quantize", "int8", "--check-file",
               str(sample)])
    info = read_export(tmp_path / "q")
    assert info["onnx"]["file"] == "model.int8.onnx" and info["onnx"]["quantize"] == "int8"
    assert not (tmp_path / "q" / "model.onnx").exists()
    check = info["onnx"]["check"]
    assert check["split"] == f"file {sample}" and check["examples"] == len(TEXTS)
    assert check["label_agreement"] >= check["tolerance"]["label_agreement"]
    assert info["onnx"]["fp32_check"]["max_abs_logit_diff"] <= 1e-3
    assert onnx_labels(tmp_path / "q", info, TEXTS) == module.predict_texts(TEXTS)


def test_a_disagreement_fails_the_export_with_one_line_and_writes_nothing(intent_checkpoint, tmp_path, capsys,
                                                                         monkeypatch):
    from cs_lightning import export as export_module

    monkeypatch.setitem(export_module.TOLERANCES, None, {"max_abs_logit_diff": -1.0, "label_agreement": 1.0})
    with pytest.raises(SystemExit) as exit_:
        cs_export([str(intent_checkpoint), str(tmp_path / "bad"), "--onnx"])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and err.count("\n") == 0
    assert "ONNX check failed" in err and "largest logit difference" in err
    assert not (tmp_path / "bad").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bad")]  # no temporary folder left behind


def test_reply_models_refuse_onnx_in_one_line(reply_checkpoint, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cs_export([str(reply_checkpoint), str(tmp_path / "r"), "--onnx"])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and err.count("\n") == 0 and "intent models only" in err
    assert "without --onnx" in err and not (tmp_path / "r").exists()


def test_a_checkpoint_whose_data_is_gone_is_checked_on_sample_texts(intent_checkpoint, tmp_path, capsys):
    folder = tmp_path / "moved"
    shutil.copytree(intent_checkpoint.parent, folder, ignore=shutil.ignore_patterns("best*"))
    raw = torch.load(folder / "last.ckpt", map_location="cpu", weights_only=True)
    raw["datamodule_hyper_parameters"].update(train_file=str(tmp_path / "gone.csv"), val_file=None)
    torch.save(raw, folder / "last.ckpt")
    cs_export([str(folder / "last.ckpt"), str(tmp_path / "o"), "--onnx"])
    assert "sample texts" in capsys.readouterr().out
    assert read_export(tmp_path / "o")["onnx"]["check"]["split"] == "sample texts"
