"""The one checkpoint reader, seen from every program that takes a checkpoint: ``cs-train --ckpt_path``,
``cs-export`` and ``cs-chat`` answer a missing, truncated, foreign or code-carrying file, and a checkpoint of the
wrong task, with one line naming the file, and never a traceback."""

import io
from pathlib import Path

import pytest
import torch

from conftest import tiny_intent_files
from cs_lightning.checkpoints import load_module, read_checkpoint
from cs_lightning.commands.chat import main as cs_chat
from cs_lightning.commands.export import main as cs_export
from cs_lightning.commands.train import main as cs_train


class Payload:
    """An object that only unpickling (running code) could rebuild."""


def bad_file(kind: str, folder: Path, good: Path) -> Path:
    path = folder / f"{kind}.ckpt"
    if kind == "missing":
        return path
    if kind == "truncated":  # the first half of a real checkpoint, as a crash mid-copy leaves it
        data = good.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "foreign":  # a bare weights file, not a Lightning checkpoint
        torch.save({"weight": torch.zeros(2)}, path)
    elif kind == "pickled":  # a checkpoint carrying an object only arbitrary code could rebuild
        raw = torch.load(good, map_location="cpu", weights_only=True)
        raw["extra"] = Payload()
        torch.save(raw, path)
    elif kind == "not_a_checkpoint":
        path.write_text("hello")
    return path


WHY = {"missing": "not found", "truncated": "truncated", "foreign": "not a Lightning checkpoint",
       "pickled": "arbitrary code", "not_a_checkpoint": "not a readable checkpoint"}


def run_program(program: str, path: Path, files: dict, capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        if program == "cs-export":
            cs_export([str(path), "out"])
        elif program == "cs-chat":
            cs_chat(["--ckpt", str(path)])
        else:
            cs_train(["validate", "--model", "cs_lightning.models.IntentClassifier", "--model.backbone=bert",
                      "--model.pretrained=false", "--model.model_size=tiny", "--data",
                      "cs_lightning.data.IntentDataModule", f"--data.train_file={files['train']}",
                      f"--data.val_file={files['val']}", f"--ckpt_path={path}"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err
    assert lines and lines[-1].startswith(f"{program}: error:"), err[-2000:]
    return lines[-1]


@pytest.mark.parametrize("kind", list(WHY))
@pytest.mark.parametrize("program", ["cs-train", "cs-export", "cs-chat"])
def test_a_bad_checkpoint_file_is_one_line_in_every_program(tmp_path, capsys, intent_checkpoint, program, kind):
    path = bad_file(kind, tmp_path, intent_checkpoint)
    line = run_program(program, path, tiny_intent_files(tmp_path / "data"), capsys)
    assert str(path) in line and WHY[kind] in line, line


def test_a_checkpoint_of_the_wrong_task_is_one_line(tmp_path, capsys, intent_checkpoint, reply_checkpoint):
    line = run_program("cs-chat", intent_checkpoint, {}, capsys)
    assert "is a intent checkpoint (IntentClassifier), but reply is needed" in line
    line = run_program("cs-train", reply_checkpoint, tiny_intent_files(tmp_path / "data"), capsys)
    assert "is a reply checkpoint (ReplyGenerator), but intent is needed" in line


def test_reading_never_runs_pickled_code(tmp_path, intent_checkpoint, monkeypatch):
    loads = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(k.get("weights_only")) or real(*a, **k))
    read_checkpoint(intent_checkpoint)
    module, data = load_module(intent_checkpoint, task="intent")
    assert loads and all(flag is True for flag in loads)
    assert module.task == "intent" and not module.training and data["batch_size"] == 4


def test_the_checkpoint_plugin_loads_weights_only(intent_checkpoint, monkeypatch):
    from cs_lightning.checkpoints import AtomicCheckpointIO

    raw = AtomicCheckpointIO().load_checkpoint(intent_checkpoint)
    assert raw["global_step"] > 0
    buffer = io.BytesIO()
    torch.save({"state_dict": {}, "x": Payload()}, buffer)
    path = intent_checkpoint.parent.parent / "pickled-plugin.ckpt"
    path.write_bytes(buffer.getvalue())
    try:
        with pytest.raises(Exception, match="arbitrary code"):
            AtomicCheckpointIO().load_checkpoint(path)
    finally:
        path.unlink()


def test_cs_chat_answers_from_the_checkpoint_alone(reply_checkpoint, monkeypatch, capsys):
    from cs_lightning.prompts import Turn

    monkeypatch.setattr("sys.stdin", io.StringIO("where is my parcel\n\n/reset\ni want a refund\n/quit\nignored\n"))
    cs_chat(["--ckpt", str(reply_checkpoint), "--domain", "shop"])
    lines = capsys.readouterr().out.splitlines()
    module, data = load_module(reply_checkpoint, task="reply")
    settings = {k: data[k] for k in ("max_context_tokens", "max_history_turns", "domain_prefix")}
    expected = [module.reply_to([Turn("user", text)], domain="shop", **settings)
                for text in ("where is my parcel", "i want a refund")]
    assert lines[1:] == [f"agent: {expected[0]}", "(new conversation)", f"agent: {expected[1]}"]


@pytest.mark.parametrize("subcommand", ["fit", "validate", "test", "predict", "fit --ckpt_path last"])
def test_a_code_carrying_checkpoint_is_refused_by_every_subcommand(tmp_path, capsys, intent_checkpoint, subcommand):
    """Every file cs-train is given is read with weights_only before any strategy restores it (FSDP's full
    checkpoints go through an unpickler of Lightning's own, which would run the code)."""
    files = tiny_intent_files(tmp_path / "data")
    pickled = bad_file("pickled", tmp_path, intent_checkpoint)
    if subcommand.endswith("last"):
        folder = tmp_path / "logs" / "resume" / "checkpoints"
        folder.mkdir(parents=True)
        pickled = pickled.rename(folder / "last.ckpt")
        ckpt = ["--experiment=resume", "--ckpt_path=last"]
    else:
        ckpt = [f"--ckpt_path={pickled}"]
    with pytest.raises(SystemExit) as exit_:
        cs_train([subcommand.split()[0], "--model", "cs_lightning.models.IntentClassifier", "--model.backbone=bert",
                  "--model.pretrained=false", "--model.model_size=tiny", "--data", "cs_lightning.data.IntentDataModule",
                  f"--data.train_file={files['train']}", f"--data.val_file={files['val']}",
                  f"--data.test_file={files['test']}", f"--data.predict_file={files['test']}", *ckpt])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and err[-1].startswith("cs-train: error: ckpt_path:")
    assert str(pickled.relative_to(tmp_path)) in err[-1] and "arbitrary code" in err[-1]
