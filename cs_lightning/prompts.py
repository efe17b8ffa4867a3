"""The one prompt and context format, shared by training data and every inference path.

The data modules encode training examples with it; ``cs-chat``, ``ReplyGenerator.reply_to``, the export's
``cs_lightning.json`` and the coming server build their prompts with it too, so a model is always asked the way it
was trained. Nothing here depends on data files or on models.

- :class:`Turn`: one utterance (``user`` or ``agent``);
- :data:`TEXT_MARKERS` (plain words, for pretrained encoders reading a message's history) and
  :data:`SPECIAL_MARKERS` (special tokens, for reply models);
- :class:`ContextBuilder`: token ids of a context, newest turns kept within a turn and a token budget;
- :class:`ReplyPrompt`: a reply model's input (and, in training, its target) for one conversation;
- :data:`CJK` and :func:`join_cjk`: the one definition of Chinese, Japanese and Korean characters.
"""

from __future__ import annotations

import re
from typing import NamedTuple, Sequence

ROLES = ("user", "agent")

# Plain-text markers suit pretrained encoders (they already know the words); reply models get special tokens.
TEXT_MARKERS = {"user": "user:", "agent": "agent:"}
SPECIAL_MARKERS = {"user": "<|user|>", "agent": "<|agent|>"}
MARKER_FORMAT = ("[<domain>:]<|user|> text<|agent|> text<|user|> text<|agent|> (newest turns kept; causal models "
                 "read the prompt and continue it, sequence-to-sequence models read it with their special tokens; "
                 "cs_lightning.prompts.ReplyPrompt builds it)")

#: CJK ideographs (unified, extension A, compatibility), CJK punctuation and full-width forms: a regex class body
CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3000-\u303f\uff00-\uffef"
_CJK_GAP = re.compile(rf"(?<=[{CJK}])\s+(?=[{CJK}])")


def join_cjk(text: str) -> str:
    """Drop the spaces some tokenizers put between Chinese characters when decoding."""
    return _CJK_GAP.sub("", text)


class Turn(NamedTuple):
    """One utterance of a conversation: who said it (``user`` or ``agent``) and what. (A named tuple, so batches
    that carry conversations move between devices untouched.)"""

    role: str
    text: str


class ContextBuilder:
    """Token ids of a conversation context: speaker-marked turns, oldest first, newest kept within the budget.

    Works on the fast tokenizer's backend, so a turn is tokenized once and the special tokens of any family
    (BERT's ``[CLS] a [SEP] b [SEP]``, T5's ``a </s> b </s>``, GPT-2's none) come from the tokenizer itself.

    Args:
        tokenizer: a Hugging Face fast tokenizer.
        max_turns: earlier turns kept at most (None: all).
        markers: text put before each turn, by role (:data:`TEXT_MARKERS` or :data:`SPECIAL_MARKERS`).
        domain_prefix: put ``"<domain>:"`` before the context when the example has a domain.
    """

    def __init__(self, tokenizer, max_turns: int | None = None, markers: dict[str, str] | None = None,
                 domain_prefix: bool = False):
        self.tokenizer, self.max_turns = tokenizer, max_turns
        self.markers = markers or TEXT_MARKERS
        self.domain_prefix = domain_prefix
        self.backend = tokenizer.backend_tokenizer
        self.backend.no_truncation()
        self.backend.no_padding()
        processor = self.backend.post_processor
        self.specials = {pair: processor.num_special_tokens_to_add(pair) if processor else 0 for pair in (False, True)}

    def encode(self, text: str):
        """The backend encoding of ``text`` without special tokens."""
        return self.backend.encode(text, add_special_tokens=False)

    def context_encoding(self, turns: Sequence[Turn], budget: int, domain: str | None = None):
        """At most ``budget`` tokens: the newest turns whole, then the end of the next older one if room is left.
        Returns a backend ``Encoding``, or None when nothing fits."""
        from tokenizers import Encoding

        if self.max_turns is not None:
            turns = turns[-self.max_turns:] if self.max_turns > 0 else ()
        prefix = [self.encode(f"{domain}:")] if self.domain_prefix and domain else []
        budget -= sum(len(p) for p in prefix)
        kept, used = [], 0
        for turn in reversed(turns):
            if used >= budget:
                break
            enc = self.encode(f"{self.markers[turn.role]} {turn.text}")
            if used + len(enc) > budget:
                enc.truncate(budget - used, direction="left")  # the oldest turn kept loses its beginning
            kept.append(enc)
            used += len(enc)
        parts = prefix + kept[::-1]
        return Encoding.merge(parts, growing_offsets=True) if parts else None

    def context_ids(self, turns: Sequence[Turn], budget: int, domain: str | None = None) -> list[int]:
        """:meth:`context_encoding` as a list of ids."""
        enc = self.context_encoding(turns, budget, domain)
        return list(enc.ids) if enc is not None else []

    def message_with_history(self, text: str, history: Sequence[Turn], max_length: int) -> tuple[list[int], list[int]]:
        """Multi-turn intent input: the message, then its history, with the family's special tokens; the message is
        cut only when it alone fills ``max_length``. Families with token types (BERT) get the history as the second
        segment; the others (T5, GPT) one sequence, since T5's classifier expects a single end-of-sequence token.
        Returns ids and token type ids."""
        from tokenizers import Encoding

        pair = "token_type_ids" in self.tokenizer.model_input_names
        message = self.encode(text)
        room = max_length - self.specials[pair and bool(history)] - len(message)
        context = self.context_encoding(history, room) if history and room > 0 else None
        if context is None:
            if len(message) > max_length - self.specials[False]:
                message.truncate(max_length - self.specials[False])
            final = self.backend.post_process(message, None, add_special_tokens=True)
        elif pair:
            final = self.backend.post_process(message, context, add_special_tokens=True)
        else:
            merged = Encoding.merge([message, context], growing_offsets=True)
            final = self.backend.post_process(merged, None, add_special_tokens=True)
        return list(final.ids), list(final.type_ids)


class ReplyPrompt:
    """A reply model's input for one conversation, in the marker format (:data:`MARKER_FORMAT`).

    ``causal``: input = context + ``<|agent|>`` (+ reply + EOS in training), the loss on the reply and EOS only.
    ``seq2seq``: input = context + ``<|agent|>`` with the family's special tokens; target = reply + EOS.

    Args:
        tokenizer: the model's tokenizer, with the speaker markers as special tokens.
        kind: ``causal`` or ``seq2seq``.
        max_context_tokens: tokens of prompt at most (newest turns kept).
        max_history_turns: earlier turns kept at most.
        domain_prefix: start the prompt with ``"<domain>:"`` when the conversation has a domain.
        max_reply_tokens: tokens of a target reply at most (training).
    """

    def __init__(self, tokenizer, kind: str, max_context_tokens: int = 192, max_history_turns: int = 6,
                 domain_prefix: bool = True, max_reply_tokens: int = 64):
        self.kind, self.max_context_tokens, self.max_reply_tokens = kind, max_context_tokens, max_reply_tokens
        self.builder = ContextBuilder(tokenizer, max_turns=max_history_turns, markers=SPECIAL_MARKERS,
                                      domain_prefix=domain_prefix)
        self.agent = self.builder.encode(SPECIAL_MARKERS["agent"])
        self.eos = tokenizer.eos_token_id

    def encode(self, context: Sequence[Turn], domain: str | None = None,
               reply: str | None = None) -> tuple[list[int], list[int], int]:
        """``(input_ids, target_ids, prompt_length)``. Without a reply (inference) the input is the prompt alone
        and the target empty; for causal models ``prompt_length`` marks where the reply starts in the input."""
        from tokenizers import Encoding

        builder, agent = self.builder, self.agent
        target = []
        if reply is not None:
            spaced = (" " if self.kind == "causal" else "") + reply
            target = list(builder.encode(spaced).ids[:self.max_reply_tokens]) + [self.eos]
        if self.kind == "causal":
            prompt = builder.context_ids(context, self.max_context_tokens - len(agent), domain) + list(agent.ids)
            return prompt + target, target, len(prompt)
        budget = self.max_context_tokens - len(agent) - builder.specials[False]
        encoded = builder.context_encoding(context, budget, domain)
        merged = Encoding.merge([encoded, agent], growing_offsets=True) if encoded is not None else agent
        prompt = list(builder.backend.post_process(merged, None, add_special_tokens=True).ids)
        return prompt, target, len(prompt)
