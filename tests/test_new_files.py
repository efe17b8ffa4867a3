"""Evaluating a checkpoint on a new file: test, validate and predict read it with the tokenizer saved beside the
checkpoint and the model's own label set, on a machine that holds only the checkpoint folder and that file (no
training data, an empty cache); a checkpoint and a tokenizer that do not fit are one line."""

import functools
import json
import shutil
from pathlib import Path

import pytest

from conftest import tiny_intent_files, write
from cs_lightning.commands.train import main
from cs_lightning.tokenization import train_tokenizer

OTHER = ["where is my order now", "refund my money please", "i am locked out of my account",
         "my parcel never came", "how long does a refund take", "password reset link broken"]
OTHER_LABELS = ["delivery", "refund", "login", "delivery", "refund", "login"]


def intent_args(train: Path, *extra: str, data: str = "cs_lightning.data.IntentDataModule") -> list[str]:
    return ["--model", "cs_lightning.models.IntentClassifier", "--model.backbone=bert", "--model.pretrained=false",
            "--model.model_size=tiny", "--model.learning_rate=0.003", "--data", data,
            f"--data.train_file={train}", "--data.val_fraction=0.2", "--data.test_fraction=0.2",
            "--data.batch_size=4", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
            "--experiment=new", *extra]


def move_to_a_new_machine(tmp_path: Path, monkeypatch, *gone: Path) -> None:
    """Only the checkpoint folder stays: the training data is gone and the cache is empty."""
    for path in gone:
        path.unlink()
    monkeypatch.setenv("CS_LIGHTNING_CACHE", str(tmp_path / "empty-cache"))


# a domain module falls back to its bundled demo data without a training file: never when evaluating a checkpoint
@pytest.mark.parametrize("data", ["cs_lightning.data.IntentDataModule", "cs_lightning.data.FinanceDataModule"])
def test_intent_test_and_predict_on_a_new_file_need_only_the_checkpoint_folder(tmp_path, monkeypatch, data):
    files = tiny_intent_files(tmp_path / "data")  # carved splits: the val/test files given are not used
    intent_args = functools.partial(globals()["intent_args"], data=data)
    main(["fit", *intent_args(files["train"], "--trainer.max_epochs=2")])
    ckpts = Path("logs/new/checkpoints")
    trained_tokenizer = json.loads((ckpts / "tokenizer" / "tokenizer.json").read_text())["model"]["vocab"]
    move_to_a_new_machine(tmp_path, monkeypatch, files["train"])
    other = write(tmp_path / "other.csv", "text,label\n" + "".join(f"{t},{l}\n" for t, l in zip(OTHER, OTHER_LABELS)))
    main(["test", *intent_args(files["train"], f"--data.test_file={other}", "--ckpt_path=best")])
    metrics = json.loads(next(Path("logs/new").glob("version_*/test_metrics.json")).read_text())
    assert 0 <= metrics["test/acc"] <= 1
    main(["predict", *intent_args(files["train"], f"--data.predict_file={other}", "--ckpt_path=best",
                                  "--predict_output=predictions.jsonl")])
    rows = [json.loads(line) for line in Path("predictions.jsonl").read_text().splitlines()]
    assert [r["text"] for r in rows] == OTHER and {r["label"] for r in rows} <= {"delivery", "refund", "login"}
    assert not (tmp_path / "empty-cache" / "tokenizers").exists()  # no tokenizer was trained on the new file
    assert json.loads((ckpts / "tokenizer" / "tokenizer.json").read_text())["model"]["vocab"] == trained_tokenizer


def test_reply_test_and_predict_on_a_new_file_need_only_the_checkpoint_folder(tmp_path, monkeypatch):
    dialogue = lambda i, ask, answer: json.dumps({"id": f"d{i}", "domain": "shop", "turns": [  # noqa: E731
        {"role": "user", "text": ask}, {"role": "agent", "text": answer}]})
    pairs = [("where is my parcel", "it arrives tomorrow"), ("i want a refund", "your refund is on its way"),
             ("my card is lost", "we froze your card")] * 4
    train = write(tmp_path / "train.jsonl", "\n".join(dialogue(i, a, b) for i, (a, b) in enumerate(pairs)) + "\n")
    args = ["--model", "cs_lightning.models.ReplyGenerator", "--model.backbone=gpt", "--model.pretrained=false",
            "--model.model_size=tiny", "--model.max_new_tokens=6", "--data", "cs_lightning.data.DialogueDataModule",
            f"--data.train_file={train}", "--data.val_fraction=0.25", "--data.tokenizer_vocab_size=300",
            "--data.batch_size=4", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
            "--experiment=new"]
    main(["fit", *args, "--trainer.max_epochs=2"])
    move_to_a_new_machine(tmp_path, monkeypatch, train)
    other = write(tmp_path / "other.jsonl", "\n".join(dialogue(i, a, b) for i, (a, b) in enumerate(
        [("is my parcel late", "it arrives tomorrow"), ("refund status please", "your refund is on its way")])) + "\n")
    main(["test", *args, f"--data.test_file={other}", "--ckpt_path=last"])
    metrics = json.loads(next(Path("logs/new").glob("version_*/test_metrics.json")).read_text())
    assert "test/loss" in metrics and "test/bleu" in metrics
    main(["predict", *args, f"--data.predict_file={other}", "--ckpt_path=last", "--predict_output=replies.jsonl"])
    assert [json.loads(line)["id"] for line in Path("replies.jsonl").read_text().splitlines()] == ["d0", "d1"]


def test_a_checkpoint_and_a_tokenizer_that_do_not_fit_are_one_line(tmp_path, capsys, intent_checkpoint):
    folder = tmp_path / "moved"
    shutil.copytree(intent_checkpoint.parent, folder)
    shutil.rmtree(folder / "tokenizer")
    other = train_tokenizer([f"word{i} other{i * 3}" for i in range(300)], "wordpiece", 600, cache_dir=tmp_path)
    shutil.copytree(other, folder / "tokenizer")
    files = tiny_intent_files(tmp_path / "data")
    with pytest.raises(SystemExit) as exit_:
        main(["test", *intent_args(files["train"], f"--data.test_file={files['test']}",
                                   f"--ckpt_path={folder / 'last.ckpt'}")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and err[-1].startswith("cs-train: error: ckpt_path:")
    assert "vocabulary" in err[-1] and "Traceback" not in "\n".join(err)
