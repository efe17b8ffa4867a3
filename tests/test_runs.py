"""``cs-runs`` on two tiny fake runs written with SummaryWriter (no training)."""

import json
import sys
from pathlib import Path

import pytest
import yaml
from torch.utils.tensorboard import SummaryWriter

from cs_lightning.commands.runs import main, short_names

FREEZE = [{"class_path": "cs_lightning.callbacks.FreezeLayers",
           "init_args": {"num_frozen_blocks": -2, "freeze_embeddings": True}}]
# run name -> (learning rate, callbacks, [(step, wall time, val/acc)])
RUNS = {
    "bert_base/version_0": (1e-4, None, [(10, 1000.0, 0.5), (20, 1010.0, 0.8), (30, 1030.0, 0.7)]),
    "bert_freeze/version_1": (5e-5, FREEZE, [(10, 2000.0, 0.6), (20, 2020.0, 0.65), (30, 2045.0, 0.9)]),
}


def _config(experiment: str, learning_rate: float, callbacks) -> dict:
    """A cs-train-like config; the logger, checkpoint folder, outputs and config path differ with the experiment."""
    return {
        "seed_everything": 42,
        "trainer": {"precision": "32-true", "max_epochs": 3, "callbacks": callbacks,
                    "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                               "init_args": {"save_dir": "logs", "name": experiment}}},
        "model": {"class_path": "cs_lightning.models.IntentClassifier",
                  "init_args": {"backbone": "bert", "learning_rate": learning_rate, "weight_decay": 0.01}},
        "data": {"class_path": "cs_lightning.data.EcommerceDataModule", "init_args": {"language": "en"}},
        "experiment": experiment,
        "predict_output": f"logs/{experiment}/predictions.jsonl",
        "checkpoint": {"dirpath": f"logs/{experiment}/checkpoints", "monitor": "val/f1_macro"},
        "config": [f"configs/{experiment}.yaml"],
    }


@pytest.fixture
def logs() -> Path:
    """Two runs under ./logs, plus a version folder without events and a checkpoints folder, both to be ignored."""
    for name, (learning_rate, callbacks, points) in RUNS.items():
        folder = Path("logs", name)
        writer = SummaryWriter(log_dir=str(folder))
        for step, wall, acc in points:
            writer.add_scalar("train/loss", 1.0 - acc, step - 5, walltime=wall - 5)
            writer.add_scalar("val/acc", acc, step, walltime=wall)
        writer.close()
        config = _config(name.split("/")[0], learning_rate, callbacks)
        (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    Path("logs/bert_base/version_7").mkdir()
    (Path("logs/bert_base/version_7") / "config.yaml").write_text("model: {}\n", encoding="utf-8")
    Path("logs/bert_base/checkpoints").mkdir()
    return Path("logs")


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """``main(argv)`` -> (exit code, stdout, stderr)."""
    try:
        main(list(argv))
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out, err = capsys.readouterr()
    return code, out, err


def test_json_compares_the_runs(logs, capsys):
    code, out, err = run_cli(capsys, "--json")
    assert code == 0, err
    records = {record["run"]: record for record in json.loads(out)}
    assert list(records) == list(RUNS)
    base, freeze = records["bert_base/version_0"], records["bert_freeze/version_1"]
    identity = (base["experiment"], base["version"], base["backbone"], base["domain"])
    assert identity == ("bert_base", 0, "bert", "ecommerce")
    assert freeze["version"] == 1
    # only the real differences: the logger, checkpoint folder, outputs, experiment and config paths are noise
    assert base["config_diff"] == {"model.init_args.learning_rate": 1e-4, "trainer.callbacks": None}
    assert freeze["config_diff"] == {"model.init_args.learning_rate": 5e-5, "trainer.callbacks": FREEZE}
    assert list(base["metrics"]) == ["val/acc"]  # train/loss is not a key metric
    assert base["metrics"]["val/acc"] == pytest.approx({"best": 0.8, "last": 0.7})
    assert freeze["metrics"]["val/acc"] == pytest.approx({"best": 0.9, "last": 0.9})
    assert base["wall_time_s"] == pytest.approx(35.0)  # train/loss at 995 .. val/acc at 1030
    assert freeze["wall_time_s"] == pytest.approx(50.0)


def test_table_names_both_runs_and_the_differences(logs, capsys):
    code, out, err = run_cli(capsys, str(logs))
    assert code == 0, err
    for name in RUNS:
        assert name in out
    assert "learning_rate=0.0001" in out and "learning_rate=5e-05" in out
    assert "callbacks=[FreezeLayers(num_frozen_blocks=-2, freeze_embeddings=true)]" in out
    assert "0.8 / 0.7" in out and "val/acc" in out and "test/acc" not in out


def test_runs_pattern_chooses_runs(logs, capsys):
    code, out, _ = run_cli(capsys, "--json", "--runs", "*freeze*")
    records = json.loads(out)
    assert code == 0 and [r["run"] for r in records] == ["bert_freeze/version_1"]
    assert records[0]["config_diff"] == {}  # nothing differs within the runs shown


def test_unreadable_run_is_skipped_with_a_warning(logs, capsys):
    Path("logs/broken/version_0").mkdir(parents=True)
    Path("logs/broken/version_0/events.out.tfevents.1.host.0.0").write_bytes(b"not an event file" * 10)
    code, out, err = run_cli(capsys, "--json")
    assert code == 0
    assert [r["run"] for r in json.loads(out)] == list(RUNS)
    assert "warning" in err and "broken" in err and "Traceback" not in err


def test_plot_writes_png(logs, capsys):
    pytest.importorskip("matplotlib")
    code, out, err = run_cli(capsys, "--json", "--metric", "val/acc", "--plot", "plots/out.png")
    assert code == 0, err
    assert Path("plots/out.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in Path("plots").iterdir()] == ["out.png"]  # no temporary file left behind
    assert len(json.loads(out)) == 2  # stdout stays JSON only


def test_plot_without_matplotlib_is_one_line_exit_2(logs, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib...` raise ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    code, out, err = run_cli(capsys, "--metric", "val/acc", "--plot", "out.png")
    assert code == 2 and out == ""
    assert err == "cs-runs: error: --plot needs matplotlib (pip install 'cs-lightning[plot]' or pip install matplotlib)\n"
    assert not Path("out.png").exists()


@pytest.mark.parametrize("make_dir", [True, False], ids=["empty", "missing"])
def test_no_runs_is_one_line_exit_1(capsys, make_dir):
    if make_dir:
        Path("logs").mkdir()
    code, out, err = run_cli(capsys)
    assert code == 1 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("cs-runs: error: logs")


def test_short_names_stay_unambiguous():
    keys = ["model.init_args.learning_rate", "model.init_args.seed", "data.init_args.seed", "trainer.callbacks"]
    assert short_names(keys) == {"model.init_args.learning_rate": "learning_rate", "model.init_args.seed": "model.seed",
                                 "data.init_args.seed": "data.seed", "trainer.callbacks": "callbacks"}
