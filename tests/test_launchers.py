"""tools/slurm/train_ddp.sbatch end to end with stand-ins for srun and scontrol: SIGUSR1 before the time limit makes
cs-train save last.ckpt and exit 0, the script requeues the job, and the requeued run resumes from last.ckpt."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import CONFIGS, REPO, tiny_intent_files, write

FAKE_SRUN = """#!/usr/bin/env bash
while [[ "$1" == --* ]]; do shift; done   # srun's own options
exec "$@"
"""
FAKE_SCONTROL = """#!/usr/bin/env bash
echo "$@" >> "$SCONTROL_LOG"
"""


def tiny_config(tmp_path: Path) -> Path:
    files = tiny_intent_files(tmp_path / "data", n_per_label=6)
    config = {
        "model": {"class_path": "cs_lightning.models.IntentClassifier",
                  "init_args": {"backbone": "bert", "pretrained": False, "model_size": "tiny", "learning_rate": 0.003}},
        "data": {"class_path": "cs_lightning.data.IntentDataModule",
                 "init_args": {"train_file": str(files["train"]), "val_file": str(files["val"]), "batch_size": 2}},
    }
    return write(tmp_path / "tiny.yaml", yaml.safe_dump(config))


@pytest.mark.slow
def test_sbatch_script_checkpoints_requeues_and_resumes(tmp_path):
    bin_dir = tmp_path / "bin"
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        write(bin_dir / name, text).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "SLURM_JOB_ID": "4242", "SCONTROL_LOG": str(tmp_path / "scontrol.log"), "CONFIG": str(tiny_config(tmp_path)),
           "PRESET": str(CONFIGS / "trainer" / "cpu.yaml"), "EXPERIMENT": "slurm", "NODES": "1", "GPUS_PER_NODE": "1",
           # last.ckpt at every epoch: its appearing is how the test knows training is under way (the default
           # write interval would write it only at the signal)
           "EXTRA_ARGS": "--trainer.max_epochs=500 --trainer.enable_progress_bar=false --checkpoint.write_interval=0"}
    script = str(REPO / "tools" / "slurm" / "train_ddp.sbatch")
    job = subprocess.Popen(["bash", script], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
    ckpt = tmp_path / "logs/slurm/checkpoints/last.ckpt"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and job.poll() is None:  # training is under way
        time.sleep(0.5)
    job.send_signal(signal.SIGUSR1)  # what SLURM sends the batch shell (--signal=B:USR1@120)
    out, _ = job.communicate(timeout=120)
    assert job.returncode == 0, out[-3000:]
    assert "requeue 4242" in (tmp_path / "scontrol.log").read_text()
    stopped = torch.load(ckpt, weights_only=True)
    assert 0 < stopped["epoch"] < 499
    # the requeued job: same script, finds last.ckpt and resumes (one more epoch, then done)
    env["EXTRA_ARGS"] = (f"--trainer.max_epochs={stopped['epoch'] + 2} --trainer.enable_progress_bar=false "
                         "--checkpoint.write_interval=0")
    again = subprocess.run(["bash", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "resuming slurm" in again.stdout
    resumed = torch.load(ckpt, weights_only=True)
    assert resumed["epoch"] == stopped["epoch"] + 1 and resumed["global_step"] > stopped["global_step"]
    assert (tmp_path / "scontrol.log").read_text().count("requeue") == 1
