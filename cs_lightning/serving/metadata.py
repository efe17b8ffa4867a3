"""What serving needs to know about an export folder: :func:`cs_lightning.export.read_export` (the one reader of
``cs_lightning.json``, with defaults for exports written before the metadata grew), plus the serving defaults of
what older exports do not say (top-k, prompt settings)."""

from __future__ import annotations

import json
from pathlib import Path

from cs_lightning.errors import ConfigError

DEFAULTS = {
    "format_version": 1, "task": None, "labels": None, "oos_label": None, "oos_threshold": None,
    "oos_threshold_on": "calibrated", "temperature": 1.0, "calibration": None, "max_length": None, "onnx": None,
    "top_k": 3, "max_history_turns": None,
    # reply models
    "reply_kind": None, "prompt_format": "markers", "system_prompt": None, "rules": None, "generation": {},
    "max_context_tokens": 192, "domain_prefix": True, "domain": None, "language": "en",
}
INTENT_DEFAULTS = {"max_length": 128, "max_history_turns": 4}  # the intent data module's defaults
REPLY_DEFAULTS = {"max_length": 1024, "max_history_turns": 6}  # ReplyPrompt's and ChatPrompt's defaults


def read_metadata(folder: str | Path, key: str) -> dict:
    """``cs_lightning.json`` of an export folder with every key :data:`DEFAULTS` names; the task and the labels come
    from ``config.json`` when the metadata does not say. ``key`` is the option the folder was given by (errors)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(key, f"{folder} is not a folder", "give the folder cs-export wrote")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ConfigError(key, f"{folder} has no config.json, so it is not a Hugging Face model folder",
                          "give the folder cs-export wrote")
    from cs_lightning.export import read_export

    try:
        found = read_export(folder)
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except ConfigError as err:  # named after the option the folder came by
        raise ConfigError(key, str(err).split(": ", 1)[-1]) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(key, f"{folder}: unreadable config.json ({err})", "export the model again") from None
    meta = {**DEFAULTS, **{k: v for k, v in found.items() if v is not None or k in ("oos_threshold", "onnx")}}
    if meta["task"] is None:
        archs = " ".join(config.get("architectures") or [])
        meta["task"] = "intent" if "SequenceClassification" in archs else "reply" if archs else None
    for name, value in (INTENT_DEFAULTS if meta["task"] == "intent" else REPLY_DEFAULTS).items():
        if meta.get(name) is None:
            meta[name] = value
    if meta["task"] == "intent" and not meta["labels"]:
        id2label = config.get("id2label") or {}
        meta["labels"] = [id2label[k] for k in sorted(id2label, key=int)]
    if meta["reply_kind"] is None and meta["task"] == "reply":
        meta["reply_kind"] = "seq2seq" if config.get("is_encoder_decoder") else "causal"
    if not meta.get("temperature"):
        meta["temperature"] = float((meta.get("calibration") or {}).get("temperature") or 1.0)
    meta["folder"], meta["name"] = str(folder), folder.resolve().name
    return meta


def onnx_file(meta: dict, key: str) -> Path:
    """The ONNX model of an export (``onnx.file`` in the metadata, else ``model.onnx``); one line when absent."""
    folder = Path(meta["folder"])
    name = (meta.get("onnx") or {}).get("file") or "model.onnx"
    path = folder / name
    if not path.is_file():
        raise ConfigError(key, f"{folder} has no ONNX model ({name})",
                          "export one with cs-export --onnx, or serve without --onnx")
    return path
