"""DDP on 2 CPU ranks and fault tolerance, through real ``cs-train`` processes (as users and clusters run it) for
every run that needs one (two ranks, a signal, a resume in a new process); the single-process reference runs they are
compared with run in-process.

- validating one checkpoint on 1 and on 2 ranks, with an odd-sized validation set, gives the same metrics;
- 2 ranks at batch B/2 train to the same weights as 1 rank at batch B, for intents (class weights, label smoothing)
  and replies (a token mean), with an odd-sized training split whose short last batch is filled with repeats that
  train nothing: no sample trains twice in an epoch;
- two epochs straight equal one epoch + resume with ``--ckpt_path last`` in a new process;
- SIGTERM / SIGUSR1 mid-epoch save ``last.ckpt`` and exit cleanly; the resumed run takes the right number of steps
  and sees every sample of the interrupted epoch exactly once;
- a NaN loss stops the run with one line and leaves the last good checkpoint intact;
- a crash during a checkpoint write leaves the previous checkpoint loadable.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest
import torch

from conftest import write

TESTS = Path(__file__).resolve().parent
CS_TRAIN = [str(Path(sys.executable).with_name("cs-train"))]
NO_DROPOUT = "--model.config_overrides={hidden_dropout_prob: 0.0, attention_probs_dropout_prob: 0.0}"
WORDS = "please today again now my the order account card parcel refund money back help urgent".split()


def data_files(folder: Path, n_train: int = 48, n_val: int = 25, cycle: tuple = (0, 1, 2)) -> dict:
    """Three intents, messages of uneven length (so length grouping matters), an odd-sized validation set; the
    labels follow ``cycle`` (class indices; an uneven one makes imbalanced data)."""
    stems = {"refund": "i want a refund", "delivery": "where is my parcel", "login": "i cannot log in"}
    rows = []
    for i in range(n_train + n_val):
        label = list(stems)[cycle[i % len(cycle)]]
        extra = " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(i % 9))
        rows.append(f"{stems[label]} {extra}".strip() + f",{label}")
    files = {"train": write(folder / "train.csv", "text,label\n" + "\n".join(rows[:n_train]) + "\n"),
             "val": write(folder / "val.csv", "text,label\n" + "\n".join(rows[n_train:]) + "\n")}
    return files


def base_args(files: dict, experiment: str, *extra: str, dropout: bool = False) -> list[str]:
    """A tiny BERT run; ``dropout`` keeps the config's default dropout (0.1), as users train (the stop-and-resume
    tests); the rank-equivalence tests switch it off, since ranks draw different masks by design."""
    return ["--model", "cs_lightning.models.IntentClassifier", "--model.backbone=bert", "--model.pretrained=false",
            "--model.model_size=tiny", "--model.learning_rate=0.003", "--model.warmup_ratio=0.1",
            *([] if dropout else [NO_DROPOUT]),
            "--data", "cs_lightning.data.IntentDataModule", f"--data.train_file={files['train']}",
            f"--data.val_file={files['val']}", "--data.batch_size=8", "--seed_everything=7",
            "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false", "--trainer.log_every_n_steps=1", f"--experiment={experiment}",
            *extra]


def cs_train(subcommand: str, args: list[str], check: bool = True, timeout: int = 240,
             cache: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    if cache is not None:
        env["CS_LIGHTNING_CACHE"] = str(cache)
    done = subprocess.run([*CS_TRAIN, subcommand, *args], capture_output=True, text=True, env=env, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"cs-train {subcommand} exited {done.returncode}:\n{done.stderr[-4000:]}")
    return done


def in_process(subcommand: str, args: list[str]) -> None:
    """cs-train in this process, on one thread as the subprocesses run: for the single-process reference runs, where
    a new process is not what is tested (it saves a process start-up of several seconds each)."""
    from cs_lightning.commands.train import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        main([subcommand, *args])
    finally:
        torch.set_num_threads(threads)


class Reference(NamedTuple):
    ckpt: Path  # last.ckpt of the straight run
    files: dict  # its data files
    cache: Path  # its cache: the runs compared with it must use the same trained tokenizer (training one is not
    #              deterministic across processes: the tokenizers library breaks ties in hash order)


@pytest.fixture(scope="session")
def straight(tmp_path_factory) -> Reference:
    """Two epochs trained straight through: the reference every stop-and-resume test compares with (trained once
    per session, in its own folder)."""
    folder = tmp_path_factory.mktemp("straight")
    files, cache = data_files(folder / "data"), folder / "cache"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.setenv("CS_LIGHTNING_CACHE", str(cache))
        in_process("fit", base_args(files, "straight", "--trainer.max_epochs=2", dropout=True))
    return Reference(folder / "logs" / "straight" / "checkpoints" / "last.ckpt", files, cache)


def weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a if a[k].is_floating_point())


def test_validation_metrics_are_the_same_on_one_and_two_ranks(tmp_path):
    files = data_files(tmp_path / "data")
    in_process("fit", base_args(files, "base", "--trainer.max_epochs=8"))
    ckpt = "logs/base/checkpoints/last.ckpt"
    in_process("validate", base_args(files, "val1", f"--ckpt_path={ckpt}", "--data.eval_batch_size=4"))
    cs_train("validate", base_args(files, "val2", "--trainer.devices=2", "--trainer.strategy=ddp", f"--ckpt_path={ckpt}",
                                   "--data.eval_batch_size=4"))
    results = {devices: json.loads(Path(f"logs/val{devices}/version_0/validate_metrics.json").read_text())
               for devices in (1, 2)}
    one, two = results[1], results[2]
    for key in ("val/loss", "val/acc", "val/f1_macro", "calibration/temperature"):  # T: fitted on gathered logits
        assert abs(one[key] - two[key]) < 1e-6, (key, one[key], two[key])
    assert 0.5 < one["val/acc"] < 1  # a trained, imperfect model: equal metrics are not a constant prediction


def assert_same_weights(a: dict, b: dict) -> None:
    """The same weights: 1e-5 apart relative to their size, and no weight more than 2e-6 apart. (The furthest apart,
    ~5e-7, are attention key biases: they get no gradient, and Adam turns their rounding noise into steps.)"""
    assert a.keys() == b.keys()
    keys = [k for k in a if a[k].is_floating_point()]
    apart = {k: float((a[k].float() - b[k].float()).abs().max()) for k in keys}
    relative = (sum(float((a[k].float() - b[k].float()).norm()) ** 2 for k in keys)
                / sum(float(b[k].float().norm()) ** 2 for k in keys)) ** 0.5
    worst = max(apart, key=apart.get)
    assert relative < 1e-5 and apart[worst] < 2e-6, f"{relative=:.2e}; {worst} {apart[worst]:.2e} apart"


def trained_ids(record: Path) -> dict:
    """{epoch: ids of the rows trained in it (padding rows left out), over every rank}."""
    epochs: dict = {}
    for row in map(json.loads, record.read_text().splitlines()):
        epochs.setdefault(row["epoch"], []).extend(i for i, pad in zip(row["ids"], row["padding"]) if not pad)
    return epochs


@pytest.mark.filterwarnings("ignore:.*could not find the monitored key")  # no validation: not what is compared
def test_two_ranks_at_half_batch_train_like_one_rank(tmp_path):
    """Odd-sized imbalanced data (47 examples: the short global batch of 8 has 7, 4 + 3 on two ranks), class weights
    and label smoothing: every global batch's weight falls unevenly between the ranks, and the loss is still the
    global batch's (issue 15)."""
    files = data_files(tmp_path / "data", n_train=47, cycle=(0, 0, 0, 1, 2))
    record = tmp_path / "batches.jsonl"
    loss = ["--model.class_weights=true", "--model.label_smoothing=0.1", "--trainer.max_epochs=2",
            "--trainer.limit_val_batches=0"]
    in_process("fit", base_args(files, "one", *loss, "--data.batch_size=8"))
    cs_train("fit", base_args(files, "two", *loss, "--data.batch_size=4", "--trainer.devices=2",
                              "--trainer.strategy=ddp", "--trainer.callbacks+=run_helpers.RecordBatches",
                              f"--trainer.callbacks.path={record}"))
    one, two = weights(Path("logs/one/checkpoints/last.ckpt")), weights(Path("logs/two/checkpoints/last.ckpt"))
    assert_same_weights(two, one)
    epochs = trained_ids(record)  # every sample once an epoch: the repeat that evens the ranks out trains nothing
    assert sorted(epochs) == [0, 1] and all(sorted(ids) == sorted(f"train.csv:{i}" for i in range(2, 49))
                                            for ids in epochs.values())
    # the comparison can tell batches apart: one rank at B/2 ends elsewhere
    in_process("fit", base_args(files, "half", *loss, "--data.batch_size=4"))
    assert max_difference(one, weights(Path("logs/half/checkpoints/last.ckpt"))) > 1e-3


DIALOGUES = Path(__file__).resolve().parents[1] / "cs_lightning/data/demo/ecommerce/dialogues/en/train.jsonl"


@pytest.mark.filterwarnings("ignore:.*could not find the monitored key")
def test_two_ranks_at_half_batch_train_replies_like_one_rank(tmp_path):
    """A tiny GPT on 8 demo dialogues (25 replies, batch 8 = 2 x 4): the loss is the mean over the reply tokens of
    the global batch, which fall unevenly between the ranks at every step; the short global batch holds one reply,
    so one rank trains only a repeat, which must count for nothing."""
    train = write(tmp_path / "data" / "dialogues.jsonl", "".join(DIALOGUES.read_text().splitlines(True)[:8]))
    args = ["--model", "cs_lightning.models.ReplyGenerator", "--model.backbone=gpt", "--model.pretrained=false",
            "--model.model_size=tiny", "--model.learning_rate=0.003",
            "--model.config_overrides={resid_pdrop: 0.0, embd_pdrop: 0.0, attn_pdrop: 0.0}",
            "--data", "cs_lightning.data.DialogueDataModule", f"--data.train_file={train}", "--data.val_fraction=0",
            "--data.tokenizer_vocab_size=300", "--data.max_context_tokens=48", "--seed_everything=7",
            "--trainer.max_epochs=2", "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false", "--trainer.log_every_n_steps=1"]
    record = tmp_path / "batches.jsonl"
    in_process("fit", [*args, "--data.batch_size=8", "--trainer.devices=1", "--experiment=one"])
    cs_train("fit", [*args, "--data.batch_size=4", "--trainer.devices=2", "--trainer.strategy=ddp",
                     "--trainer.callbacks+=run_helpers.RecordBatches", f"--trainer.callbacks.path={record}",
                     "--experiment=two"])
    one, two = weights(Path("logs/one/checkpoints/last.ckpt")), weights(Path("logs/two/checkpoints/last.ckpt"))
    assert_same_weights(two, one)
    epochs = trained_ids(record)
    assert sorted(epochs) == [0, 1] and all(len(ids) == len(set(ids)) == 25 for ids in epochs.values())
    assert any(all(row["padding"]) for row in map(json.loads, record.read_text().splitlines()))


def test_resume_in_a_new_process_continues_exactly(tmp_path, straight):
    """Two epochs straight vs the first epoch, stop, and the second in a new process with --ckpt_path last.

    The signal comes with the first epoch's last batch: the epoch finishes (validation, epoch-end checkpoint) and
    the run stops at the next batch boundary, since Lightning cannot resume from the last batch of an epoch."""
    files = straight.files  # 48 examples, batch 8: 6 steps an epoch
    cs_train("fit", base_args(files, "resumed", "--trainer.max_epochs=2", "--trainer.callbacks+=run_helpers.SignalAt",
                              "--trainer.callbacks.step=6", dropout=True), cache=straight.cache)
    stopped = torch.load("logs/resumed/checkpoints/last.ckpt", weights_only=True)
    assert stopped["global_step"] == 7 and stopped["epoch"] == 1
    cs_train("fit", base_args(files, "resumed", "--trainer.max_epochs=2", "--ckpt_path=last", dropout=True),
             cache=straight.cache)
    straight = torch.load(straight.ckpt, map_location="cpu", weights_only=True)
    resumed = torch.load("logs/resumed/checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert straight["global_step"] == resumed["global_step"] == 12
    assert max_difference(straight["state_dict"], resumed["state_dict"]) < 1e-6
    for a, b in zip(straight["optimizer_states"][0]["param_groups"], resumed["optimizer_states"][0]["param_groups"]):
        assert a["lr"] == b["lr"]
    assert straight["lr_schedulers"][0]["last_epoch"] == resumed["lr_schedulers"][0]["last_epoch"] == 12


@pytest.mark.parametrize("signum, step", [(signal.SIGTERM, 8), (signal.SIGUSR1, 3)],
                         ids=["SIGTERM-second-epoch", "SIGUSR1-first-epoch"])
def test_signal_mid_epoch_saves_and_the_resumed_run_sees_every_sample_once(tmp_path, signum, step, straight):
    files = straight.files  # 48 examples, batch 8: 6 steps an epoch
    record = tmp_path / "batches.jsonl"
    recorder = ["--trainer.callbacks+=run_helpers.RecordBatches", f"--trainer.callbacks.path={record}"]
    stopped = cs_train("fit", base_args(files, "pre", "--trainer.max_epochs=2", *recorder,
                                        "--trainer.callbacks+=run_helpers.SignalAt", f"--trainer.callbacks.step={step}",
                                        f"--trainer.callbacks.signum={int(signum)}", dropout=True),
                       cache=straight.cache)
    ckpt = torch.load("logs/pre/checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == step, stopped.stderr[-2000:]
    resumed = cs_train("fit", base_args(files, "pre", "--trainer.max_epochs=2", *recorder, "--ckpt_path=last",
                                        dropout=True), cache=straight.cache)
    rows = [json.loads(line) for line in record.read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(12))  # no step repeated, none skipped
    interrupted = [i for r in rows if r["epoch"] == step // 6 for i in r["ids"]]
    assert sorted(interrupted) == sorted(set(interrupted)) and len(interrupted) == 48
    # last.ckpt is the newest state, never a last-v1.ckpt beside a stale one (a stop before any epoch-end save
    # used to leave the resumed run writing last-v1.ckpt), and neither run printed a misleading message
    assert sorted(p.name for p in Path("logs/pre/checkpoints").glob("last*.ckpt")) == ["last.ckpt"]
    assert torch.load("logs/pre/checkpoints/last.ckpt", weights_only=True)["global_step"] == 12
    for output in (stopped.stderr, resumed.stderr):
        assert "not resumable" not in output and "weights_only` was not set" not in output
    # and the weights are those of an uninterrupted run
    assert max_difference(weights(Path("logs/pre/checkpoints/last.ckpt")), weights(straight.ckpt)) < 1e-6


def test_nan_loss_stops_with_one_line_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    files = data_files(tmp_path / "data")
    with pytest.raises(SystemExit) as exit_:
        in_process("fit", base_args(files, "nan", "--trainer.max_epochs=3", "--checkpoint.every_n_train_steps=2",
                                    "--trainer.log_every_n_steps=3", "--trainer.callbacks+=run_helpers.NaNAt",
                                    "--trainer.callbacks.step=5"))
    stderr = capsys.readouterr().err
    assert exit_.value.code == 2, stderr[-3000:]
    error = [line for line in stderr.splitlines() if line.startswith("cs-train: error:")]
    assert len(error) == 1 and "NaN or infinite at step 5" in error[0] and "Traceback" not in stderr
    last = torch.load("logs/nan/checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 4
    assert all(bool(torch.isfinite(t).all()) for t in last["state_dict"].values() if t.is_floating_point())


CRASH_DURING_WRITE = """
import os, sys, torch
from cs_lightning.checkpoints import AtomicCheckpointIO
real_save = torch.save
def crash(obj, f, *a, **k):
    out = open(f, "wb") if isinstance(f, (str, os.PathLike)) else f
    out.write(b"PK-partial")  # a few bytes of a zip archive, then the process dies mid-write
    out.flush()
    os._exit(9)
torch.save = crash
AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(3)}}, sys.argv[1])
"""


def test_a_crash_during_a_checkpoint_write_leaves_the_previous_one_loadable(tmp_path):
    from cs_lightning.checkpoints import AtomicCheckpointIO

    path = tmp_path / "ckpts" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "global_step": 4}, path)
    done = subprocess.run([sys.executable, "-c", CRASH_DURING_WRITE, str(path)], capture_output=True)
    assert done.returncode == 9
    assert torch.load(path, weights_only=True)["global_step"] == 4
    assert sorted(p.name for p in path.parent.glob("*.ckpt")) == ["last.ckpt"]  # the torn file is not a .ckpt


def test_non_finite_weights_are_never_written(tmp_path):
    from cs_lightning.errors import CSLightningError
    from cs_lightning.checkpoints import AtomicCheckpointIO

    path = tmp_path / "last.ckpt"
    with pytest.raises(CSLightningError, match="NaN or infinity"):
        AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.tensor([1.0, float("inf")])}}, path)
    assert not path.exists()


def test_predict_on_two_ranks_writes_every_input_once_in_file_order(tmp_path, straight):
    files = straight.files
    done = cs_train("predict", base_args(files, "pred", "--trainer.devices=2", "--trainer.strategy=ddp",
                                         f"--ckpt_path={straight.ckpt}",
                                         f"--data.predict_file={files['val']}", "--predict_output=preds.jsonl"),
                    cache=straight.cache)
    rows = [json.loads(line) for line in Path("preds.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"val.csv:{i}" for i in range(2, 27)], done.stdout[-1000:]


def test_a_full_disk_is_one_clear_error_and_the_previous_file_survives(tmp_path, monkeypatch):
    import errno

    from cs_lightning.errors import CSLightningError
    from cs_lightning.checkpoints import AtomicCheckpointIO

    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.zeros(2)}, "global_step": 3}, path)

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", no_space)
    with pytest.raises(CSLightningError) as err:
        AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(2)}, "global_step": 4}, path)
    assert "disk full" in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["global_step"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_a_file_that_is_not_a_checkpoint_is_one_line(tmp_path, capsys):
    from cs_lightning.commands.train import main

    bad = write(tmp_path / "bad.ckpt", "not a checkpoint")
    files = data_files(tmp_path / "data")
    with pytest.raises(SystemExit) as exit_:
        main(["validate", *base_args(files, "bad", f"--ckpt_path={bad}")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("cs-train: error: ckpt_path:") and str(bad) in err[-1]


def test_two_ranks_stopped_and_resumed_with_dropout_train_like_two_ranks_straight(tmp_path):
    """Every rank's random state travels in the checkpoint: with the default dropout, a 2-rank run stopped by a
    signal mid-epoch and resumed in new processes ends with the weights of a 2-rank run that never stopped."""
    files = data_files(tmp_path / "data")  # 48 examples, 8 per rank: 3 steps an epoch
    two = ["--trainer.max_epochs=2", "--trainer.devices=2", "--trainer.strategy=ddp"]
    cs_train("fit", base_args(files, "straight2", *two, dropout=True))
    cs_train("fit", base_args(files, "stopped2", *two, "--trainer.callbacks+=run_helpers.SignalAt",
                              "--trainer.callbacks.step=4", dropout=True))
    assert torch.load("logs/stopped2/checkpoints/last.ckpt", weights_only=True)["global_step"] == 5  # agreed a batch on
    cs_train("fit", base_args(files, "stopped2", *two, "--ckpt_path=last", dropout=True))
    straight, resumed = (torch.load(f"logs/{name}/checkpoints/last.ckpt", map_location="cpu", weights_only=True)
                         for name in ("straight2", "stopped2"))
    assert straight["global_step"] == resumed["global_step"] == 6
    assert max_difference(straight["state_dict"], resumed["state_dict"]) < 1e-6
    assert len(resumed["callbacks"]["RandomState"]["ranks"]) == 2  # each rank's own state (without them: 1.7e-3 apart)


@pytest.mark.parametrize("signum, ranks", [(signal.SIGTERM, "1"), (signal.SIGUSR1, "all")],
                         ids=["SIGTERM-to-rank-1", "SIGUSR1-to-all"])
def test_a_signal_to_one_rank_or_all_stops_every_rank_after_the_same_batch(tmp_path, signum, ranks):
    """Two ranks, 3 steps an epoch: the signal comes after step 4 (mid second epoch); every rank trains exactly one
    more batch (the one during which they agree), saves, and exits cleanly; the resumed run sees the rest."""
    files = data_files(tmp_path / "data")
    record = tmp_path / "batches.jsonl"
    two = ["--trainer.max_epochs=3", "--trainer.devices=2", "--trainer.strategy=ddp",
           "--trainer.log_every_n_steps=50",  # the ranks agree at every batch, not only at logging steps
           "--trainer.callbacks+=run_helpers.RecordBatches", f"--trainer.callbacks.path={record}"]
    done = cs_train("fit", base_args(files, "sig2", *two, "--trainer.callbacks+=run_helpers.SignalAt",
                                     "--trainer.callbacks.step=4", f"--trainer.callbacks.signum={int(signum)}",
                                     f"--trainer.callbacks.ranks={ranks}"))
    rows = [json.loads(line) for line in record.read_text().splitlines()]
    last = {rank: max(r["step"] for r in rows if r["rank"] == rank) for rank in (0, 1)}
    assert last == {0: 4, 1: 4}, done.stderr[-2000:]  # both trained the batch that completes step 5, no further
    assert torch.load("logs/sig2/checkpoints/last.ckpt", weights_only=True)["global_step"] == 5
    cs_train("fit", base_args(files, "sig2", *two, "--ckpt_path=last"))
    rows = [json.loads(line) for line in record.read_text().splitlines()]
    for rank in (0, 1):
        assert [r["step"] for r in rows if r["rank"] == rank] == list(range(9))  # none repeated, none skipped
