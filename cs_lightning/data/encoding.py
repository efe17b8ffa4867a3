"""Tokenizing a split once: messages (with their history) to token ids, cached under a content hash."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from cs_lightning.data.dialogue import Dialogue, ReplyExample
from cs_lightning.data.schema import IntentRecord
from cs_lightning.errors import CSLightningError
from cs_lightning.io import atomic_path
from cs_lightning.prompts import TEXT_MARKERS, ChatPrompt, ContextBuilder, ReplyPrompt
from cs_lightning.tokenization import cache_root, content_key, tokenizer_fingerprint

_VERSION = "3"  # bump when the encoding below changes


def encode_records(tokenizer, records: Sequence[IntentRecord], max_length: int, max_history_turns: int) -> dict:
    """Token ids of each record: the message, then its history (newest turns kept) as the second segment."""
    single = [i for i, r in enumerate(records) if not r.history or max_history_turns <= 0]
    with_history = [i for i, r in enumerate(records) if r.history and max_history_turns > 0]
    want_types = "token_type_ids" in tokenizer.model_input_names
    ids: list[list[int]] = [[] for _ in records]
    types: list[list[int]] = [[] for _ in records]
    if single:
        out = tokenizer([records[i].text for i in single], truncation=True, max_length=max_length,
                        return_token_type_ids=want_types)
        for j, i in enumerate(single):
            ids[i] = out["input_ids"][j]
            types[i] = out["token_type_ids"][j] if want_types else []
    if with_history:
        builder = ContextBuilder(tokenizer, max_turns=max_history_turns, markers=TEXT_MARKERS)
        for i in with_history:
            ids[i], types[i] = builder.message_with_history(records[i].text, records[i].history, max_length)
    result = {}
    result["input_ids"], result["offsets"] = _flat(ids)
    if want_types:
        result["token_type_ids"] = _flat(types, torch.int8)[0]
    return result


def _flat(rows: list[list[int]], dtype: torch.dtype = torch.int32) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ids as one flat tensor plus offsets (row i is ``flat[offsets[i]:offsets[i + 1]]``)."""
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    flat = torch.tensor([t for r in rows for t in r], dtype=dtype)
    return flat, torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])


def _cached(key_parts: list, compute, cache_dir: str | Path | None) -> dict:
    """``compute()``, cached under a hash of ``key_parts``. Every rank may call this at once: the cache file is
    written to a temporary name and renamed, so readers see either no file or a whole one."""
    path = Path(cache_dir or cache_root() / "tokens") / f"{content_key(_VERSION, *key_parts)}.pt"
    if path.exists():
        try:
            return torch.load(path, weights_only=True)
        except Exception:  # unreadable cache: rebuild it
            pass
    encoded = compute()
    try:
        with atomic_path(path) as tmp:
            torch.save(encoded, tmp)
    except (OSError, CSLightningError):  # a read-only or full cache folder only costs speed
        pass
    return encoded


def cached_encode(tokenizer, records: Sequence[IntentRecord], max_length: int, max_history_turns: int,
                  cache_dir: str | Path | None = None) -> dict:
    """:func:`encode_records`, cached under a hash of the tokenizer, the settings and the texts."""
    parts = [tokenizer_fingerprint(tokenizer), max_length, max_history_turns,
             [(r.text, [(t.role, t.text) for t in r.history]) for r in records]]
    if "token_type_ids" not in tokenizer.model_input_names:  # one trained tokenizer serves BERT and DistilBERT alike
        parts.append("no token types")
    return _cached(parts, lambda: encode_records(tokenizer, records, max_length, max_history_turns), cache_dir)


def encode_replies(tokenizer, examples: Sequence[ReplyExample], kind: str, max_context_tokens: int,
                   max_reply_tokens: int, max_history_turns: int, domain_prefix: bool) -> dict:
    """Token ids of reply examples in the prompt format of :class:`~cs_lightning.prompts.ReplyPrompt`: inputs,
    targets (reply + EOS) and, for causal models, ``prompt_lengths`` marking where the reply starts (the loss covers
    the reply and EOS only). Examples without a reply (prediction input) get the prompt only."""
    prompt = ReplyPrompt(tokenizer, kind, max_context_tokens, max_history_turns, domain_prefix, max_reply_tokens)
    inputs, targets, prompt_lengths = [], [], []
    for ex in examples:
        ids, target, prompt_length = prompt.encode(ex.context, ex.domain, ex.reply)
        inputs.append(ids)
        targets.append(target)
        prompt_lengths.append(prompt_length)
    result = {}
    result["input_ids"], result["offsets"] = _flat(inputs)
    result["target_ids"], result["target_offsets"] = _flat(targets)
    if kind == "causal":
        result["prompt_lengths"] = torch.tensor(prompt_lengths, dtype=torch.long)
    return result


def cached_encode_replies(tokenizer, examples: Sequence[ReplyExample], kind: str, max_context_tokens: int,
                          max_reply_tokens: int, max_history_turns: int, domain_prefix: bool,
                          cache_dir: str | Path | None = None) -> dict:
    """:func:`encode_replies`, cached under a hash of the tokenizer, the settings and the examples."""
    settings = [kind, max_context_tokens, max_reply_tokens, max_history_turns, domain_prefix]
    parts = [tokenizer_fingerprint(tokenizer), settings,
             [(e.domain, [(t.role, t.text) for t in e.context], e.reply) for e in examples]]
    return _cached(parts, lambda: encode_replies(tokenizer, examples, *settings), cache_dir)


def encode_conversations(tokenizer, dialogues: Sequence[Dialogue], system_prompt: str | None, max_length: int) -> dict:
    """Chat format, training and evaluation loss: each dialogue one sequence in the tokenizer's chat template (or
    pieces split at user turns when longer than ``max_length``), ``loss_mask`` 1 on the assistant tokens
    (:class:`~cs_lightning.prompts.ChatPrompt`). ``dialogue_index`` names the dialogue of each sequence;
    ``split``/``truncated`` count the dialogues split and the exchanges cut from the left."""
    prompt = ChatPrompt(tokenizer, system_prompt, max_length)
    inputs, masks, index = [], [], []
    for i, dialogue in enumerate(dialogues):
        for ids, mask in prompt.encode_conversation(dialogue.turns, dialogue.system):
            inputs.append(ids)
            masks.append(mask)
            index.append(i)
    result = {}
    result["input_ids"], result["offsets"] = _flat(inputs)
    result["loss_mask"] = _flat(masks, torch.int8)[0]
    result["dialogue_index"] = torch.tensor(index, dtype=torch.long)
    result["split"] = torch.tensor(prompt.split)
    result["truncated"] = torch.tensor(prompt.truncated)
    return result


def encode_chat_prompts(tokenizer, examples: Sequence[ReplyExample], system_prompt: str | None,
                        max_length: int) -> dict:
    """Chat format, generation: the prompt of each example's reply (system message, the context, the template's
    generation prompt); ``prompt_lengths`` is the whole input, as the reply collator expects."""
    prompt = ChatPrompt(tokenizer, system_prompt, max_length)
    inputs = [prompt.prompt_ids(ex.context, ex.system) for ex in examples]
    result = {}
    result["input_ids"], result["offsets"] = _flat(inputs)
    result["prompt_lengths"] = torch.tensor([len(ids) for ids in inputs], dtype=torch.long)
    return result


def _chat_key(tokenizer) -> list:
    return [tokenizer_fingerprint(tokenizer), tokenizer.chat_template, "chat"]


def cached_encode_conversations(tokenizer, dialogues: Sequence[Dialogue], system_prompt: str | None, max_length: int,
                                cache_dir: str | Path | None = None) -> dict:
    """:func:`encode_conversations`, cached under a hash of the tokenizer, its template, the settings and texts."""
    parts = _chat_key(tokenizer) + [system_prompt, max_length,
                                    [(d.system, [(t.role, t.text) for t in d.turns]) for d in dialogues]]
    return _cached(parts, lambda: encode_conversations(tokenizer, dialogues, system_prompt, max_length), cache_dir)


def cached_encode_chat_prompts(tokenizer, examples: Sequence[ReplyExample], system_prompt: str | None,
                               max_length: int, cache_dir: str | Path | None = None) -> dict:
    """:func:`encode_chat_prompts`, cached under a hash of the tokenizer, its template, the settings and texts."""
    parts = _chat_key(tokenizer) + ["prompts", system_prompt, max_length,
                                    [(e.system, [(t.role, t.text) for t in e.context]) for e in examples]]
    return _cached(parts, lambda: encode_chat_prompts(tokenizer, examples, system_prompt, max_length), cache_dir)
