"""Out-of-scope detection: threshold fitting, held-out intents, fallback predictions, CLINC150 import."""

import json

import pytest
import torch

from conftest import tiny_intent_files, write
from cs_lightning.commands.train import CSLightningCLI
from cs_lightning.data import IntentDataModule
from cs_lightning.commands.data import main as cs_data
from cs_lightning.errors import ConfigError
from cs_lightning.models.intent import fit_threshold


def test_threshold_separates_confident_in_scope_from_unsure_out_of_scope():
    # classes 0, 1 in scope, 2 = oos; in-scope examples are confident, oos ones are not
    confidence = torch.tensor([0.95, 0.9, 0.85, 0.8, 0.4, 0.35, 0.3, 0.7])
    argmax = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
    gold = torch.tensor([0, 1, 0, 1, 2, 2, 2, 0])  # the last one is in scope but wrong
    t = fit_threshold(confidence, argmax, gold, oos_index=2, classes=3)
    assert 0.4 < t < 0.81
    strict = fit_threshold(confidence, argmax, gold, oos_index=2, classes=3, target="precision:1.0")
    assert strict == pytest.approx(0.8)  # rejecting the wrong 0.7 answer makes every accepted answer right
    assert fit_threshold(confidence, argmax, gold, 2, 3, "precision:0.5") == 0.0  # all answers: 4 of 8 right
    assert fit_threshold(confidence, argmax, gold, 2, 3, "precision:0.6") == pytest.approx(0.4)


def test_held_out_intents_become_oos_in_val_and_test(tmp_path):
    files = tiny_intent_files(tmp_path, n_per_label=6)
    dm = IntentDataModule(train_file=str(files["train"]), test_file=str(files["test"]), backbone="bert",
                          oos_label="oos", holdout_intents=1, val_fraction=0.3)
    assert len(dm.held_out) == 1 and dm.held_out[0] not in dm.label_names
    assert {r.label for r in dm.records["train"]} == set(dm.label_names)
    assert "oos" in {r.label for r in dm.records["test"]} and "oos" in {r.label for r in dm.records["val"]}
    with pytest.raises(ConfigError, match="needs data.oos_label"):
        IntentDataModule(train_file=str(files["train"]), holdout_intents=1)


def test_fit_and_test_with_a_fallback_label(tmp_path):
    files = tiny_intent_files(tmp_path / "data", n_per_label=6)
    write(files["val"], "text,label\nwhere is my parcel,delivery\nforgot my password,login\ntell me a joke,oos\n"
                        "what is the weather,oos\n")
    args = ["--model", "cs_lightning.models.IntentClassifier", "--model.backbone=bert", "--model.pretrained=false",
            "--model.model_size=tiny", "--model.learning_rate=0.003", "--data", "cs_lightning.data.IntentDataModule",
            f"--data.train_file={files['train']}", f"--data.val_file={files['val']}", "--data.oos_label=oos",
            "--data.batch_size=4", "--trainer.max_epochs=2", "--trainer.enable_progress_bar=false",
            "--experiment=oos"]
    cli = CSLightningCLI(args=args, run=False)
    assert cli.model.oos_index == 3 and cli.model.metric_names[-1] == "oos"
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    metrics = cli.trainer.callback_metrics
    assert "oos/threshold" in metrics and "oos/val_recall" in metrics and "oos/val_in_scope_acc" in metrics
    cli.model.threshold.fill_(1.01)  # nothing is confident enough: every answer is the fallback
    assert set(cli.model.predict_texts(["where is my parcel", "tell me a joke"])) == {"oos"}
    raw = torch.load("logs/oos/checkpoints/last.ckpt", weights_only=True)
    assert "threshold" in raw["state_dict"]  # the fitted threshold travels with the checkpoint


def test_clinc150_importer_on_a_small_hand_made_file(tmp_path):
    data = {"train": [["how do i transfer money", "transfer"], ["book a flight", "book_flight"]],
            "val": [["send money to mom", "transfer"]], "test": [["fly me to paris", "book_flight"]],
            "oos_train": [["tell me a joke", "oos"]], "oos_val": [["what is love", "oos"]],
            "oos_test": [["sing a song", "oos"]]}
    src = write(tmp_path / "data_full.json", json.dumps(data))
    with pytest.raises(SystemExit) as exit_:
        cs_data(["import", "--format", "clinc150", str(src), str(tmp_path / "clinc")])
    assert exit_.value.code == 0
    train = [json.loads(line) for line in (tmp_path / "clinc" / "train.jsonl").read_text().splitlines()]
    assert [(r["text"], r["label"]) for r in train] == [("how do i transfer money", "transfer"),
                                                         ("book a flight", "book_flight"), ("tell me a joke", "oos")]
    dm = IntentDataModule(train_file=str(tmp_path / "clinc" / "train.jsonl"),
                          val_file=str(tmp_path / "clinc" / "val.jsonl"),
                          test_file=str(tmp_path / "clinc" / "test.jsonl"), oos_label="oos", backbone="bert")
    assert "oos" in dm.label_names  # CLINC150 trains on its out-of-scope examples
