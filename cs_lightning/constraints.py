"""Blocked phrases as a generation constraint that holds however the tokenizer splits the words.

``bad_words_ids`` bans token sequences, and a phrase has many: "保证" alone is one token, inside "我们保证您的退款"
the Unigram or byte-level BPE tokenizer may split it into other pieces, "guaranteed" may come as "guarantee"+"d".
:class:`BlockedPhrases` looks at text instead: at every step, for each hypothesis, it decodes the reply so far with
each candidate token and bans the candidate when the text would then break the rule for good, with the same
:class:`~cs_lightning.rules.PhraseMatcher` that evaluation uses (whole words for letters and digits, ``allow``
exceptions). A text that may still be excused by what follows ("保证" on the way to the allowed "保证金",
"guaranteed" that may go on to "guaranteedly") is kept open, and the end of the reply (an end-of-sequence token,
or the last token allowed) is checked as finished text: a reply that leaves the constraint never contains a
blocked phrase, and nothing after the fact removes one.

Candidates are checked best first, only as many as the search can pick: one for greedy decoding, the beams' width
for beam search (``keep``). With sampling the ``keep`` best allowed candidates stay and the rest are set aside, so
sampling draws from the best ``keep`` allowed tokens (a top-k on the allowed ones).
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch
from transformers import LogitsProcessor

from cs_lightning.rules import PhraseMatcher


class BlockedPhrases(LogitsProcessor):
    """A ``transformers`` logits processor that makes the blocked phrases of ``matcher`` impossible to generate.

    Args:
        matcher: the phrases and their exceptions.
        decode: turns lists of generated token ids into texts (``tokenizer.batch_decode`` with the arguments the
            replies are decoded with).
        prompt_length: how many leading positions of ``input_ids`` are the prompt (causal models: the padded prompt
            width; encoder-decoder models: 1, the decoder start token).
        max_new_tokens: the generation limit; the last step's candidates are checked as finished replies.
        eos_token_ids: the tokens that end a reply.
        keep: allowed candidates to find per hypothesis (1 for greedy, the number of beams the search keeps for
            beam search, the sampling pool size with ``sample=True``).
        sample: set aside every candidate beyond the ``keep`` best allowed ones (sampling could draw any of them).
    """

    def __init__(self, matcher: PhraseMatcher, decode: Callable[[list[list[int]]], list[str]], prompt_length: int,
                 max_new_tokens: int, eos_token_ids: Iterable[int], keep: int = 1, sample: bool = False):
        self.matcher = matcher
        self.decode = decode
        self.prompt_length = prompt_length
        self.max_new_tokens = max_new_tokens
        self.eos = {int(i) for i in eos_token_ids if i is not None}
        self.keep = max(1, keep)
        self.sample = sample
        self._last_chars = {p[-1] for p in matcher.phrases}
        self._texts: dict[int, str] = {}

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        generated = input_ids[:, self.prompt_length:].tolist()
        last_step = input_ids.shape[1] - self.prompt_length + 1 >= self.max_new_tokens
        prefixes = self.decode(generated)
        for row, (ids, prefix) in enumerate(zip(generated, prefixes)):
            if self.eos.intersection(ids):
                continue  # a finished reply (greedy search keeps padding it)
            # an occurrence left open (it may still become an allowed phrase or a longer word) makes every
            # candidate count; otherwise only a candidate that could end a phrase can create one
            open_occurrence = bool(self.matcher.find(prefix, final=True))
            self._constrain(ids, scores[row], last_step, open_occurrence)
        return scores

    def _could_end_a_phrase(self, token: int) -> bool:
        """Whether ``token``'s text holds the last character of a blocked phrase (or part of a character): a new
        occurrence ends inside the text the new token adds, so no other token can complete one."""
        text = self._texts.get(token)
        if text is None:
            text = self._texts[token] = self.decode([[token]])[0].lower()
        return "\ufffd" in text or not self._last_chars.isdisjoint(text)

    def _constrain(self, ids: list[int], row: torch.Tensor, last_step: bool, open_occurrence: bool) -> None:
        vocab = row.shape[0]
        banned: list[int] = []
        allowed: list[int] = []
        checked, chunk = 0, self.keep
        while len(allowed) < self.keep and checked < vocab:
            width = min(vocab, checked + chunk)
            values, order = torch.topk(row, width)
            candidates = [t for t, v in zip(order[checked:].tolist(), values[checked:].tolist()) if v != float("-inf")]
            if not candidates:
                break
            to_check = [t for t in candidates if open_occurrence or self._could_end_a_phrase(t)]
            texts = dict(zip(to_check, self.decode([ids + [t] for t in to_check]))) if to_check else {}
            for token in candidates:
                text = texts.get(token)
                if text is not None and self.matcher.find(text, final=last_step or token in self.eos):
                    banned.append(token)
                else:
                    allowed.append(token)
                    if len(allowed) == self.keep:
                        break
            checked = width
            chunk = max(64, chunk * 4)
        if self.sample:
            keep = torch.zeros(vocab, dtype=torch.bool, device=row.device)
            keep[allowed] = True
            row.masked_fill_(~keep, float("-inf"))
        elif banned:
            row[banned] = float("-inf")


def blocked_phrases_processor(matcher: PhraseMatcher, tokenizer, prompt_length: int, max_new_tokens: int,
                              eos_token_ids: Sequence[int] | int | None, num_beams: int = 1, sample: bool = False,
                              sample_pool: int = 50, **decode_kwargs) -> BlockedPhrases:
    """The processor for one ``generate`` call, with ``keep`` set for its search: greedy 1, beam search the number of
    candidates it keeps per step ((end tokens + 1) x beams), sampling ``sample_pool``."""
    eos = [eos_token_ids] if isinstance(eos_token_ids, int) else list(eos_token_ids or [])
    keep = sample_pool if sample else (1 if num_beams <= 1 else (len(eos) + 1) * num_beams)
    decode_kwargs.setdefault("skip_special_tokens", True)

    def decode(rows: list[list[int]]) -> list[str]:
        return tokenizer.batch_decode(rows, **decode_kwargs)

    return BlockedPhrases(matcher, decode, prompt_length, max_new_tokens, eos, keep=keep, sample=sample)


def template_tokens(tokenizer, end_ids: Sequence[int]) -> list[int]:
    """The special tokens a chat reply must never contain: every special token of the tokenizer but the ones that end
    the reply (``<|im_start|>`` mid-reply would open a new turn that decoding hides). For ``suppress_tokens``."""
    ends = {int(i) for i in end_ids if i is not None}
    return sorted(set(tokenizer.all_special_ids) - ends)
