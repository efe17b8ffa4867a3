"""Backbone plugins from separate packages, the plugin contract, cs-backbones, and users' own modules."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import REPO, tiny_intent_files, write
from cs_lightning.commands.backbones import describe
from cs_lightning.commands.train import main
from cs_lightning.testing import check_backbone


@pytest.mark.parametrize("name", ["bert", "gpt", "t5"])
def test_builtin_plugins_honour_the_contract(name, tmp_path):
    summary = check_backbone(name, tmp_cache=str(tmp_path))
    assert "intent" in summary


def test_cs_backbones_lists_plugins_and_survives_a_broken_one(monkeypatch, capsys):
    from importlib.metadata import EntryPoint

    import cs_lightning.registry as registry

    real = registry._entry_points()
    broken = EntryPoint(name="broken", value="no_such_module_xyz:Thing", group=registry.GROUP)
    monkeypatch.setattr(registry, "_entry_points", lambda: real + [broken])
    registry.backbone_class.cache_clear()
    try:
        rows = {r["name"]: r for r in describe()}
    finally:
        registry.backbone_class.cache_clear()
    assert rows["t5"]["tasks"] == ["intent", "reply"] and rows["bert"]["package"] == "cs-lightning"
    assert rows["broken"]["error"] and "failed to import" in rows["broken"]["error"]


def test_template_plugin_installs_and_trains(tmp_path, monkeypatch):
    target = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                              "--no-index", "--target", str(target), str(REPO / "tools" / "plugin_template")],
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr
    env = {**os.environ, "PYTHONPATH": str(target)}
    # the installed package is found through its entry point, in this process as in a new one (PYTHONPATH)
    monkeypatch.syspath_prepend(str(target))
    rows = {r["name"]: r for r in describe()}
    assert rows["distilbert"]["package"] == "cs-lightning-distilbert" and rows["distilbert"]["error"] is None
    files = tiny_intent_files(tmp_path / "data")
    main(["fit", "--model", "cs_lightning.models.IntentClassifier", "--model.backbone", "distilbert",
          "--model.pretrained", "false", "--model.model_size", "tiny", "--data", "cs_lightning.data.IntentDataModule",
          "--data.train_file", str(files["train"]), "--data.val_file", str(files["val"]),
          "--trainer.fast_dev_run", "true", "--trainer.enable_progress_bar", "false"])
    contract = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               str(REPO / "tools" / "plugin_template" / "tests")],
                              capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert contract.returncode == 0, contract.stdout[-3000:]


USER_MODULES = '''
import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset


class TicketLengthData(pl.LightningDataModule):
    """A user's own data: features of tickets, a binary label."""

    def __init__(self, n: int = 64, batch_size: int = 16):
        super().__init__()
        self.save_hyperparameters()
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 4, generator=g)
        self.y = (self.x.sum(1) > 0).long()

    def train_dataloader(self):
        return DataLoader(TensorDataset(self.x, self.y), batch_size=self.hparams.batch_size, shuffle=True)

    def val_dataloader(self):
        return DataLoader(TensorDataset(self.x, self.y), batch_size=self.hparams.batch_size)


class TicketModel(pl.LightningModule):
    """A user's own model."""

    def __init__(self, hidden: int = 8, learning_rate: float = 0.05):
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 2))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self.net(x), y)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self.net(x)
        self.log("val/loss", torch.nn.functional.cross_entropy(logits, y))
        self.log("val/f1_macro", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.learning_rate)
'''


def test_users_own_modules_train_through_cs_train(tmp_path, monkeypatch):
    write(tmp_path / "my_support_models.py", textwrap.dedent(USER_MODULES))
    monkeypatch.syspath_prepend(str(tmp_path))
    main(["fit", "--model", "my_support_models.TicketModel", "--data", "my_support_models.TicketLengthData",
          "--model.hidden", "16", "--trainer.max_epochs", "2", "--experiment", "mine",
          "--trainer.enable_progress_bar", "false"])
    run = Path("logs/mine")
    assert (run / "checkpoints" / "last.ckpt").exists() and list((run / "checkpoints").glob("best*.ckpt"))
    assert list(run.glob("version_0/events.out.tfevents.*")) and (run / "version_0" / "config.yaml").exists()
