"""The one safe writer: files and folders appear whole; a folder being replaced never goes missing; a real full
disk is one line naming the path, and the previous file or folder is intact."""

import os
import subprocess
import threading

import pytest

from cs_lightning.errors import CSLightningError
from cs_lightning.io import atomic_dir, atomic_path, build_dir_once, exchange


def test_a_file_appears_whole_or_keeps_its_old_content(tmp_path):
    target = tmp_path / "out" / "a.json"
    with atomic_path(target) as tmp:
        tmp.write_text("first")
    assert target.read_text() == "first"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "first"
    assert [p.name for p in target.parent.iterdir()] == ["a.json"]  # no temporary file left behind


def test_a_replaced_folder_is_never_missing_and_never_mixed(tmp_path):
    target = tmp_path / "tokenizer"
    atomic_dir(target, lambda d: [(d / f"f{i}").write_text("0") for i in range(5)])
    seen, stop = [], threading.Event()

    def reader():
        while not stop.is_set():
            try:
                folder = os.open(target, os.O_RDONLY)  # a reader resolves the folder once, as a loader does
            except FileNotFoundError:
                seen.append("missing")
                continue
            versions = set()
            try:
                for name in os.listdir(folder):
                    try:
                        fd = os.open(name, os.O_RDONLY, dir_fd=folder)
                    except FileNotFoundError:  # an old version being cleaned up after the swap
                        continue
                    with os.fdopen(fd) as f:
                        versions.add(f.read())
            finally:
                os.close(folder)
            seen.append(versions)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for version in range(1, 40):
            atomic_dir(target, lambda d, v=version: [(d / f"f{i}").write_text(str(v)) for i in range(5)])
    finally:
        stop.set()
        thread.join()
    assert "missing" not in seen
    assert len(seen) > 10 and all(len(versions) <= 1 for versions in seen)  # never two versions mixed
    assert {p.read_text() for p in target.iterdir()} == {"39"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer"]


def test_exchange_swaps_two_folders(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x").write_text("from a")
    if not exchange(tmp_path / "a", tmp_path / "b"):
        pytest.skip("this system or filesystem has no atomic exchange (renameat2); atomic_dir falls back")
    assert (tmp_path / "b" / "x").read_text() == "from a" and not (tmp_path / "a" / "x").exists()


def test_build_dir_once_builds_once(tmp_path):
    calls = []
    for _ in range(3):
        build_dir_once(tmp_path / "cache" / "k", lambda d: calls.append((d / "f").write_text("x")))
    assert len(calls) == 1 and (tmp_path / "cache" / "k" / "f").read_text() == "x"


@pytest.fixture
def small_disk(tmp_path):
    """A real 64 KiB filesystem (tmpfs), or skip where mounting is not allowed."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip() or 'not root'})")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_is_one_line_and_keeps_the_previous_file(small_disk):
    target = small_disk / "report.json"
    with atomic_path(target) as tmp:
        tmp.write_text("previous")
    with pytest.raises(CSLightningError) as err:
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"x" * (1024 * 1024))
    assert str(target) in str(err.value) and "disk full" in str(err.value) and "\n" not in str(err.value)
    assert target.read_text() == "previous"
    assert [p.name for p in small_disk.iterdir()] == ["report.json"]


def test_a_full_disk_is_one_line_and_keeps_the_previous_folder(small_disk):
    target = small_disk / "export"
    atomic_dir(target, lambda d: (d / "config.json").write_text("previous"))
    with pytest.raises(CSLightningError) as err:
        atomic_dir(target, lambda d: (d / "model.safetensors").write_bytes(b"x" * (1024 * 1024)))
    assert str(target) in str(err.value) and "disk full" in str(err.value)
    assert [p.name for p in target.iterdir()] == ["config.json"]
    assert (target / "config.json").read_text() == "previous"
    assert [p.name for p in small_disk.iterdir()] == ["export"]


def test_cs_export_on_a_full_disk_is_one_line(small_disk, intent_checkpoint, capsys):
    from cs_lightning.commands.export import main as cs_export

    target = small_disk / "exported"
    atomic_dir(target, lambda d: (d / "README").write_text("previous export"))
    with pytest.raises(SystemExit) as exit_:
        cs_export([str(intent_checkpoint), str(target)])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and err.count("\n") == 0 and "Traceback" not in err
    assert err.startswith("cs-export: error:") and str(target) in err and "disk full" in err
    assert (target / "README").read_text() == "previous export"


def test_a_checkpoint_on_a_full_disk_is_one_line_and_keeps_the_previous_one(small_disk):
    """torch's zip writer reports a real full disk as "PytorchStreamWriter failed writing file", not ENOSPC."""
    import torch

    from cs_lightning.checkpoints import AtomicCheckpointIO

    path = small_disk / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.zeros(4)}, "global_step": 3}, path)
    with pytest.raises(CSLightningError) as err:
        AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.zeros(256 * 1024)}, "global_step": 4}, path)
    assert str(path) in str(err.value) and "disk full" in str(err.value) and "\n" not in str(err.value)
    assert torch.load(path, weights_only=True)["global_step"] == 3
    assert [p.name for p in small_disk.iterdir()] == ["last.ckpt"]


def test_a_tokenizer_folder_on_a_full_disk_is_one_line_and_keeps_the_previous_one(small_disk):
    from cs_lightning.tokenization import train_tokenizer
    from transformers import AutoTokenizer

    texts = [f"message number {i} about parcel {i * 7} and refund {i * 13}" for i in range(400)]
    tokenizer = AutoTokenizer.from_pretrained(str(train_tokenizer(texts, "bpe", 2000)))
    target = small_disk / "tokenizer"
    atomic_dir(target, lambda d: (d / "tokenizer_config.json").write_text("{}"))
    (small_disk / "filler").write_bytes(b"x" * (40 * 1024))  # leave less room than the tokenizer files take
    with pytest.raises(CSLightningError) as err:
        atomic_dir(target, lambda d: tokenizer.save_pretrained(str(d)))
    assert str(target) in str(err.value) and "disk full" in str(err.value)
    assert [p.name for p in target.iterdir()] == ["tokenizer_config.json"]


def test_a_predictions_file_on_a_full_disk_is_one_line_and_keeps_the_previous_one(small_disk):
    from cs_lightning.callbacks.artifacts import PredictionWriter

    out = small_disk / "predictions.jsonl"
    out.write_text('{"id": "old"}\n')

    class Trainer:  # what write_on_epoch_end reads of the trainer, on one rank
        is_global_zero = True
        datamodule = None

    rows = [[{"id": f"r{i}", "label": "refund", "confidence": 0.5, "text": "x" * 200}] for i in range(400)]
    with pytest.raises(CSLightningError) as err:
        PredictionWriter(str(out)).write_on_epoch_end(Trainer(), None, rows, None)
    assert str(out) in str(err.value) and "disk full" in str(err.value)
    assert out.read_text() == '{"id": "old"}\n'
