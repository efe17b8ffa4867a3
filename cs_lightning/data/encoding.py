"""Tokenizing a split once: messages (with their history) to token ids, cached under a content hash."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

import torch

from cs_lightning.data.dialogue import render_history
from cs_lightning.data.schema import IntentRecord
from cs_lightning.errors import CSLightningError
from cs_lightning.io import atomic_path
from cs_lightning.tokenization import cache_root, content_key

_VERSION = "1"  # bump when the encoding below changes


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of what decides the token ids: the tokenizer's vocabulary, rules and special tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        spec.pop("truncation", None)
        spec.pop("padding", None)
        text = json.dumps(spec, sort_keys=True, ensure_ascii=False)
    else:  # a slow tokenizer: its vocabulary is the best we have
        text = json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False)
    return hashlib.sha256((type(tokenizer).__name__ + text).encode("utf-8")).hexdigest()[:20]


def encode_records(tokenizer, records: Sequence[IntentRecord], max_length: int, max_history_turns: int) -> dict:
    """Token ids of each record: the message, then its history (newest turns kept) as the second segment."""
    texts = [r.text for r in records]
    histories = [render_history(r.history, max_history_turns) for r in records]
    encoded: list[list[int] | None] = [None] * len(records)
    types: list[list[int] | None] = [None] * len(records)
    single = [i for i, h in enumerate(histories) if not h]
    paired = [i for i, h in enumerate(histories) if h]
    if single:
        out = tokenizer([texts[i] for i in single], truncation=True, max_length=max_length)
        for j, i in enumerate(single):
            encoded[i] = out["input_ids"][j]
            types[i] = out["token_type_ids"][j] if "token_type_ids" in out else None
    side = tokenizer.truncation_side
    tokenizer.truncation_side = "left"  # drop the oldest history first
    try:
        for i in paired:
            try:
                out = tokenizer(texts[i], histories[i], truncation="only_second", max_length=max_length)
            except Exception:  # the message alone fills the window: keep the message, drop the history
                tokenizer.truncation_side = side
                out = tokenizer(texts[i], truncation=True, max_length=max_length)
                tokenizer.truncation_side = "left"
            encoded[i] = out["input_ids"]
            types[i] = out["token_type_ids"] if "token_type_ids" in out else None
    finally:
        tokenizer.truncation_side = side
    lengths = torch.tensor([len(ids) for ids in encoded], dtype=torch.long)
    result = {
        "input_ids": torch.tensor([t for ids in encoded for t in ids], dtype=torch.int32),
        "offsets": torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]),
    }
    if all(t is not None for t in types) and any(any(t) for t in types):
        result["token_type_ids"] = torch.tensor([t for ts in types for t in ts], dtype=torch.int8)
    return result


def cached_encode(tokenizer, records: Sequence[IntentRecord], max_length: int, max_history_turns: int,
                  cache_dir: str | Path | None = None) -> dict:
    """:func:`encode_records`, cached under a hash of the tokenizer, the settings and the texts.

    Every rank may call this at once: the cache file is written to a temporary name and renamed, so readers see
    either no file or a whole one.
    """
    key = content_key(_VERSION, tokenizer_fingerprint(tokenizer), max_length, max_history_turns,
                      [(r.text, [(t.role, t.text) for t in r.history]) for r in records])
    path = Path(cache_dir or cache_root() / "tokens") / f"{key}.pt"
    if path.exists():
        try:
            return torch.load(path, weights_only=True)
        except Exception:  # unreadable cache: rebuild it
            pass
    encoded = encode_records(tokenizer, records, max_length, max_history_turns)
    try:
        with atomic_path(path) as tmp:
            torch.save(encoded, tmp)
    except (OSError, CSLightningError):  # a read-only or full cache folder only costs speed
        pass
    return encoded
