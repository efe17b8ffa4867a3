"""GPU-only checks (marker ``gpu``; tools/gpu_check.py runs them): mixed precision with and without gradient
clipping, and the AdamW implementation chosen for each."""

import pytest
import torch

from conftest import tiny_intent_files
from test_cli import tiny_args
from cs_lightning.commands.train import CSLightningCLI

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed"])
@pytest.mark.parametrize("clip", [None, 1.0], ids=["no-clip", "clip"])
def test_mixed_precision_trains_with_the_right_adamw(tmp_path, precision, clip):
    files = tiny_intent_files(tmp_path / "data")
    extra = ["--trainer.accelerator=gpu", "--trainer.devices=1", f"--trainer.precision={precision}",
             "--trainer.max_epochs=2", f"--experiment=gpu_{precision}_{clip}"]
    if clip:
        extra.append(f"--trainer.gradient_clip_val={clip}")
    cli = CSLightningCLI(args=tiny_args(files, "bert", *extra), run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    group = cli.trainer.optimizers[0].param_groups[0]
    assert bool(group.get("fused")) is (clip is None)  # Lightning refuses clipping with a fused optimizer
    assert bool(group.get("foreach")) is (clip is not None)
    loss = cli.trainer.callback_metrics["train/loss"]
    assert torch.isfinite(loss)
