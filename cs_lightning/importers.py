"""Importers of public dialogue datasets into our dialogue JSON Lines (``{"id", "domain", "turns"}``).

- ``sgd``: Schema-Guided Dialogue (a ``dialogues_*.json`` file or a folder of them); the domain is the dialogue's
  services (``Banks_1``, ``Restaurants_1+Events_2``), the intent the first active intent of the user.
- ``crosswoz``: CrossWOZ (a ``*.json`` file, or the upstream ``*.json.zip``); the domain is the dialogue's domains
  in order of appearance (``餐馆+酒店``).
- ``clinc150``: CLINC150 intents (``data_full.json``) into train/val/test intent files, out-of-scope as ``oos``.
"""

from __future__ import annotations

import json
import zipfile
import zlib
from pathlib import Path
from typing import Iterator

from cs_lightning.errors import DataError

FORMATS = ("sgd", "crosswoz", "clinc150")


def _load_json(path: Path):
    try:
        if path.suffix == ".zip":
            try:
                with zipfile.ZipFile(path) as archive:
                    members = [m for m in archive.namelist() if m.endswith(".json")]
                    if not members:
                        raise DataError(path, "the zip holds no .json file", fix="give the dataset's json or json.zip")
                    raw = archive.read(members[0])
            # a damaged zip fails in many ways: bad CRC, a cut deflate stream, a seek before the start...
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError) as err:
                raise DataError(path, "not a valid zip file" + (f" ({err})" if str(err) else ""),
                                fix="give the dataset's original file") from None
            return json.loads(raw.decode("utf-8-sig"))
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(path, f"not valid JSON ({err})", fix="give the dataset's original file") from None
    except RecursionError:
        raise DataError(path, "not valid JSON (nested too deeply)", fix="give the dataset's original file") from None


def _files(src: Path, pattern: str) -> list[Path]:
    if not src.exists():
        raise DataError(src, "not found", fix="check the path")
    files = sorted(p for p in src.glob(pattern) if p.is_file()) if src.is_dir() else [src]
    if not files:
        raise DataError(src, f"no {pattern} files in this folder", fix="point to the dataset's dialogue files")
    return files


def _problem(err: Exception) -> str:
    """What a KeyError, TypeError or AttributeError met while reading a record says about the record."""
    return f"missing field {err}" if isinstance(err, KeyError) else f"a field has the wrong type ({err})"


def import_sgd(src: str | Path) -> Iterator[dict]:
    """Dialogues of Schema-Guided Dialogue files (``schema.json`` is skipped)."""
    for path in _files(Path(src), "dialogues_*.json"):
        data = _load_json(path)
        if not isinstance(data, list):
            raise DataError(path, "expected a JSON list of dialogues", fix="give an SGD dialogues_NNN.json file")
        for i, dialogue in enumerate(data):
            try:
                turns = [{"role": "user" if t["speaker"] == "USER" else "agent", "text": t["utterance"].strip()}
                         for t in dialogue["turns"] if t["utterance"].strip()]
                intent = next((f["state"]["active_intent"] for t in dialogue["turns"] for f in t.get("frames", [])
                               if f.get("state", {}).get("active_intent", "NONE") != "NONE"), None)
                yield {"id": dialogue["dialogue_id"], "domain": "+".join(dialogue["services"]), "intent": intent,
                       "turns": turns}
            except (KeyError, TypeError, AttributeError) as err:
                raise DataError(path, f"dialogue {i}: {_problem(err)}", fix="give an unmodified SGD file") from None


def import_crosswoz(src: str | Path) -> Iterator[dict]:
    """Dialogues of a CrossWOZ split file (json or json.zip)."""
    for path in _files(Path(src), "*.json*"):
        data = _load_json(path)
        if not isinstance(data, dict):
            raise DataError(path, "expected a JSON object keyed by dialogue id", fix="give a CrossWOZ split file")
        for did, dialogue in data.items():
            try:
                turns, domains = [], []
                for message in dialogue["messages"]:
                    text = message["content"].strip()
                    if text:
                        turns.append({"role": "user" if message["role"] == "usr" else "agent", "text": text})
                    for act in message.get("dialog_act", []):
                        if len(act) > 1 and act[1] not in ("greet", "thank", "bye", "welcome", "none", "General") \
                                and act[1] not in domains:
                            domains.append(act[1])
                yield {"id": str(did), "domain": "+".join(domains) or None, "type": dialogue.get("type"),
                       "turns": turns}
            except (KeyError, TypeError, AttributeError) as err:
                raise DataError(path, f"dialogue {did if did.isprintable() else repr(did)}: {_problem(err)}",
                                fix="give an unmodified CrossWOZ file") from None


def import_clinc150(src: str | Path) -> dict[str, list[dict]]:
    """CLINC150 ``data_full.json`` (or ``data_small.json``...): intent splits with the out-of-scope examples folded
    in under the label ``oos``. Returns ``{"train": [...], "val": [...], "test": [...]}`` of intent records."""
    path = _files(Path(src), "data_full.json")[0]
    data = _load_json(path)
    if not isinstance(data, dict) or not {"train", "val", "test"} <= set(data):
        raise DataError(path, "expected an object with train, val and test lists", fix="give CLINC150's data_full.json")
    splits = {}
    for split in ("train", "val", "test"):
        rows = []
        for key in (split, f"oos_{split}"):
            if not isinstance(data.get(key, []), list):
                raise DataError(path, f"a JSON {type(data[key]).__name__} where a list of [text, label] pairs was "
                                      "expected", field=key, fix="give an unmodified file")
            for i, pair in enumerate(data.get(key, [])):
                if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
                    raise DataError(path, f"{key}[{i}] is not a [text, label] pair", fix="give an unmodified file")
                rows.append({"id": f"{key}-{i}", "text": pair[0], "label": pair[1]})
        splits[split] = rows
    return splits


IMPORTERS = {"sgd": import_sgd, "crosswoz": import_crosswoz}  # dialogue formats
INTENT_IMPORTERS = {"clinc150": import_clinc150}
