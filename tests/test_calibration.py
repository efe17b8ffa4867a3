"""Calibrated confidences: the temperature fitted on validation logits, the ECE and reliability bins, the
checkpoint and test report that carry them, and the confused-pairs image that replaces a large confusion matrix."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import write
from cs_lightning.callbacks.report import (CONFUSION_LIMIT, IntentReport, confused_pairs_image, confusion_image,
                                           reliability_image)
from cs_lightning.checkpoints import load_module
from cs_lightning.models.calibration import (calibration_figures, expected_calibration_error, fit_temperature,
                                             reliability_bins)
from cs_lightning.models.intent import most_confused


def overconfident(n=2000, classes=5, seed=0):
    """Logits whose softmax is far too sure: labels drawn from softmax(z), logits 4 * z."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, classes, generator=g) * 1.5
    labels = torch.multinomial(z.softmax(-1), 1, generator=g).squeeze(1)
    return 4 * z, labels


def test_temperature_lowers_the_nll_of_an_overconfident_model_and_finds_the_true_scale():
    logits, labels = overconfident()
    t = fit_temperature(logits, labels)
    assert 3.4 < t < 4.6  # the logits were scaled by 4
    assert F.cross_entropy(logits / t, labels) < 0.8 * F.cross_entropy(logits, labels)
    figures = calibration_figures(logits, labels, t)
    assert figures["ece_after"] < 0.03 < 0.15 < figures["ece_before"]
    assert fit_temperature(logits / 4, labels) == pytest.approx(1.0, abs=0.15)  # already calibrated: about 1


def test_ece_on_a_hand_made_example():
    # bins of width 1/15: 0.95 and 0.97 share the last bin, 0.3 and 0.31 the fifth ((4/15, 5/15])
    confidence = torch.tensor([0.95, 0.97, 0.30, 0.31])
    correct = torch.tensor([1.0, 0.0, 1.0, 1.0])
    # last bin: accuracy 0.5, mean confidence 0.96, gap 0.46, weight 2/4; fifth: accuracy 1, confidence 0.305
    expected = 0.5 * 0.46 + 0.5 * 0.695
    assert expected_calibration_error(confidence, correct) == pytest.approx(expected, abs=1e-6)
    bins = reliability_bins(confidence, correct)
    assert bins["count"][14] == 2 and bins["count"][4] == 2 and sum(bins["count"]) == 4
    assert bins["accuracy"][14] == 0.5 and bins["confidence"][4] == pytest.approx(0.305)
    assert expected_calibration_error(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 1.0])) == 0.0


def test_most_confused_pairs_by_count_then_name():
    labels = [f"intent_{i:03d}" for i in range(40)]
    m = torch.zeros(40, 40, dtype=torch.long)
    m.fill_diagonal_(9)  # the diagonal is never a confusion
    m[3, 7], m[7, 3], m[10, 2], m[5, 6] = 5, 2, 5, 1
    pairs = most_confused(m, labels, top=3)
    assert pairs == [{"gold": "intent_003", "predicted": "intent_007", "count": 5},
                     {"gold": "intent_010", "predicted": "intent_002", "count": 5},
                     {"gold": "intent_007", "predicted": "intent_003", "count": 2}]
    assert most_confused(torch.eye(3, dtype=torch.long) * 4, labels[:3]) == []


class FakeExperiment:
    def __init__(self):
        self.images = {}

    def add_image(self, tag, image, step):
        assert image.ndim == 3 and image.shape[0] == 3 and 0 <= float(image.min()) <= float(image.max()) <= 1
        self.images[tag] = image


class FakeTrainer:
    def __init__(self, folder):
        self.log_dir, self.is_global_zero, self.global_step = str(folder), True, 0
        self.logger = type("Logger", (), {"experiment": FakeExperiment()})()
        self.datamodule = None


def report_for(classes: int) -> dict:
    labels = [f"intent_{i}" for i in range(classes)]
    m = torch.eye(classes, dtype=torch.long) * 3
    m[0, 1] = 2
    logits, gold = overconfident(300, 4)
    calibration = calibration_figures(logits, gold, fit_temperature(logits, gold))
    return {"accuracy": 0.9, "f1_macro": 0.9, "examples": int(m.sum()), "confusion": m.tolist(),
            "per_class": {n: {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 3} for n in labels},
            "calibration": calibration}


@pytest.mark.parametrize("classes", [CONFUSION_LIMIT, CONFUSION_LIMIT + 1])
def test_report_shows_the_confused_pairs_above_the_limit_and_the_reliability_diagram(tmp_path, classes):
    trainer = FakeTrainer(tmp_path)
    module = type("Module", (), {"test_report": report_for(classes), "misclassified": []})()
    IntentReport().on_test_end(trainer, module)
    images = trainer.logger.experiment.images
    assert ("test/most_confused" in images) == (classes > CONFUSION_LIMIT)
    assert ("test/confusion_matrix" in images) == (classes <= CONFUSION_LIMIT)
    assert "test/reliability" in images
    saved = json.loads((tmp_path / "test_report.json").read_text())
    assert len(saved["confusion"]) == classes  # the JSON keeps the full matrix


def test_images_are_drawn_with_names():
    pairs = [{"gold": "card_arrival", "predicted": "card_delivery_estimate", "count": 12},
             {"gold": "top_up_failed", "predicted": "top_up_reverted", "count": 3}]
    image = confused_pairs_image(pairs)
    assert image.shape[0] == 3 and image.shape[2] == 900 and float(image.min()) < 0.5  # text and bars drawn
    assert confused_pairs_image([]).shape[0] == 3
    logits, gold = overconfident(200, 3)
    assert reliability_image(calibration_figures(logits, gold, 2.0)).shape[0] == 3
    assert confusion_image([[1, 0], [0, 1]]).shape == (3, 12, 12)


def copy_checkpoint(ckpt: Path, folder: Path, change) -> Path:
    """A copy of a checkpoint's folder (tokenizer, config) with the checkpoint dictionary changed by ``change``."""
    shutil.copytree(ckpt.parent, folder, ignore=shutil.ignore_patterns("*.ckpt"))
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    change(raw)
    torch.save(raw, folder / "last.ckpt")
    return folder / "last.ckpt"


def test_a_checkpoint_written_before_temperatures_loads_with_the_raw_softmax(intent_checkpoint, tmp_path):
    def old(raw):
        raw["state_dict"].pop("temperature", None)
        raw["cs_lightning"].pop("calibration", None)

    module, _ = load_module(copy_checkpoint(intent_checkpoint, tmp_path / "old", old))
    assert float(module.temperature) == 1.0 and module.calibration is None
    assert module.predict_texts(["refund please"])[0] in {"refund", "delivery", "login"}


def test_validation_fits_the_temperature_then_the_threshold_on_calibrated_confidences(intent_checkpoint, tmp_path):
    def with_oos(raw):
        raw["hyper_parameters"]["oos_label"] = "oos"  # no class of its own: the index after the last
        raw["state_dict"]["threshold"] = torch.tensor(0.0)

    module, _ = load_module(copy_checkpoint(intent_checkpoint, tmp_path / "oos", with_oos))
    assert module.oos_index == 3
    logits, labels = overconfident(400, 3, seed=1)
    labels[:40] = 3  # out-of-scope examples: no class, left out of the temperature fit
    module._val_logits = [torch.cat([logits, labels.unsqueeze(1).float()], 1)]
    with pytest.warns(Warning):  # self.log outside a trainer only warns
        module._fit_on_validation()
    t = float(module.temperature)
    assert t == pytest.approx(fit_temperature(logits[40:], labels[40:]), rel=1e-6) and t > 2
    assert module.calibration["split"] == "val" and module.calibration["examples"] == 360
    assert module.calibration["ece_after"] < module.calibration["ece_before"]
    assert 0 < float(module.threshold) < 1
    # decisions use the calibrated confidence
    preds, confidence = module.decide(logits[:5])
    assert torch.allclose(confidence, (logits[:5] / t).softmax(-1).max(-1).values)


def test_too_few_validation_examples_keep_the_raw_softmax(intent_checkpoint):
    module, _ = load_module(intent_checkpoint)
    logits, labels = overconfident(10, 3)
    module._val_logits = [torch.cat([logits, labels.unsqueeze(1).float()], 1)]
    module._fit_on_validation()
    assert float(module.temperature) == 1.0 and module.calibration is None


def test_fit_and_test_write_the_temperature_ece_and_reliability_image(tmp_path):
    from cs_lightning.commands.train import main

    phrases = {"refund": ["i want my money back", "refund please", "how do i get a refund", "refund status",
                          "where is my refund", "refund not received", "money back for my order", "return and refund"],
               "delivery": ["where is my parcel", "track my order", "when will it arrive", "delivery is late",
                            "package not delivered", "shipping time", "courier status", "my parcel is lost"],
               "login": ["cannot log in", "forgot my password", "reset password", "account locked",
                         "login code not working", "sign in fails", "two factor problem", "password expired"]}
    rows = [f"{t},{label}" for label, texts in phrases.items() for t in texts]
    train = write(tmp_path / "train.csv", "text,label\n" + "\n".join(rows[::2] + rows[1::2][:3]) + "\n")
    val = write(tmp_path / "val.csv", "text,label\n" + "\n".join(rows) + "\n")  # 24 examples
    main(["fit", "--model", "cs_lightning.models.IntentClassifier", "--model.backbone=bert", "--model.pretrained=false",
          "--model.model_size=tiny", "--model.learning_rate=0.003", "--data", "cs_lightning.data.IntentDataModule",
          f"--data.train_file={train}", f"--data.val_file={val}", f"--data.test_file={val}", "--data.batch_size=8",
          "--trainer.max_epochs=1", "--trainer.enable_progress_bar=false", "--experiment=calib"])
    ckpt = Path("logs/calib/checkpoints/last.ckpt")
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    calibration = raw["cs_lightning"]["calibration"]
    assert calibration["examples"] == 24 and calibration["split"] == "val"
    assert float(raw["state_dict"]["temperature"]) != 1.0
    main(["test", "--config", "logs/calib/version_0/config.yaml", f"--ckpt_path={ckpt}",
          "--trainer.enable_progress_bar=false"])
    report = json.loads(next(Path("logs/calib").glob("version_*/test_report.json")).read_text())
    assert report["calibration"]["temperature"] == pytest.approx(float(raw["state_dict"]["temperature"]))
    assert {"ece_before", "ece_after", "reliability", "fitted_on"} <= set(report["calibration"])
    assert report["calibration"]["examples"] == 24
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for events in Path("logs/calib").glob("version_*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        tags |= set(acc.Tags()["images"])
    assert {"test/reliability", "test/confusion_matrix"} <= tags
