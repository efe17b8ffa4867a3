"""What ``fit`` writes: ``last.ckpt`` with the full training state, best checkpoints with the weights only, files at
most every ``checkpoint.write_interval`` minutes, and nothing lost at the end of fit, on a pre-emption signal or on a
failure (issue 16: the main job wrote a 272 MB ``last.ckpt`` every epoch and full best checkpoints)."""

from pathlib import Path

import pytest
import torch

from conftest import tiny_intent_files
from cs_lightning.checkpoints import AtomicCheckpointIO
from cs_lightning.commands.train import main
from test_cli import tiny_args


@pytest.fixture
def writes(monkeypatch) -> list[str]:
    """The names of the files the checkpoint plugin writes, in order."""
    written: list[str] = []
    save = AtomicCheckpointIO.save_checkpoint

    def spy(self, checkpoint, path, storage_options=None):
        written.append(Path(path).name)
        return save(self, checkpoint, path, storage_options)

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", spy)
    return written


def load(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_a_run_shorter_than_the_interval_writes_last_and_best_once(tmp_path, writes):
    files = tiny_intent_files(tmp_path / "data")
    main(["fit", *tiny_args(files, "bert", "--trainer.max_epochs=4", "--experiment=short")])
    folder = Path("logs/short/checkpoints")
    best = [p.name for p in folder.glob("best*.ckpt")]
    assert len(best) == 1 and sorted(writes) == sorted(["last.ckpt", *best])  # one write each, nothing removed
    last, kept = load(folder / "last.ckpt"), load(folder / best[0])
    assert last["global_step"] == 20 and "optimizer_states" in last  # the state to resume from
    assert "optimizer_states" not in kept and kept["state_dict"].keys() == last["state_dict"].keys()
    assert kept["hyper_parameters"]["labels"] == last["hyper_parameters"]["labels"]
    # the best is the epoch it names, not the weights at the end: a copy was kept when it was best
    assert f"epoch{kept['epoch']:02d}" in best[0]
    if kept["global_step"] != last["global_step"]:
        assert any(not torch.equal(kept["state_dict"][k], last["state_dict"][k]) for k in kept["state_dict"])
    # test and resume still work from these files
    main(["test", *tiny_args(files, "bert", "--experiment=short", "--ckpt_path=best")])
    main(["fit", *tiny_args(files, "bert", "--trainer.max_epochs=5", "--experiment=short", "--ckpt_path=last")])
    assert load(folder / "last.ckpt")["global_step"] == 25  # one more epoch of 5 steps


def test_write_interval_zero_writes_at_every_save_point(tmp_path, writes):
    files = tiny_intent_files(tmp_path / "data")
    main(["fit", *tiny_args(files, "bert", "--trainer.max_epochs=3", "--experiment=every",
                            "--checkpoint.write_interval=0")])
    assert writes.count("last.ckpt") == 3


def test_a_signal_writes_the_best_kept_in_memory_and_last(tmp_path, writes):
    files = tiny_intent_files(tmp_path / "data")  # 18 examples, batch 4: 5 steps an epoch
    stop = ["--trainer.callbacks+=run_helpers.SignalAt", "--trainer.callbacks.step=12"]
    with pytest.raises(SystemExit):
        main(["fit", *tiny_args(files, "bert", "--trainer.max_epochs=4", "--experiment=stopped", *stop)])
    folder = Path("logs/stopped/checkpoints")
    best = list(folder.glob("best*.ckpt"))
    assert len(best) == 1 and load(folder / "last.ckpt")["global_step"] == 12
    assert load(best[0])["epoch"] <= 1


def test_fit_from_a_weights_only_checkpoint_is_one_line(tmp_path, capsys):
    files = tiny_intent_files(tmp_path / "data")
    main(["fit", *tiny_args(files, "bert", "--trainer.max_epochs=1", "--experiment=w")])
    best = next(Path("logs/w/checkpoints").glob("best*.ckpt"))
    with pytest.raises(SystemExit) as exit_:
        main(["fit", *tiny_args(files, "bert", "--trainer.max_epochs=2", "--experiment=w", f"--ckpt_path={best}")])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert exit_.value.code == 2 and len(err) == 1 and "holds the weights only" in err[0] and "last" in err[0]
