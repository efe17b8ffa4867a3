"""The one prompt and context format, shared by training data and every inference path.

The data modules encode training examples with it; ``cs-chat``, ``ReplyGenerator.reply_to``, the export's
``cs_lightning.json`` and the coming server build their prompts with it too, so a model is always asked the way it
was trained. Nothing here depends on data files or on models.

- :class:`Turn`: one utterance (``user`` or ``agent``);
- :data:`TEXT_MARKERS` (plain words, for pretrained encoders reading a message's history) and
  :data:`SPECIAL_MARKERS` (special tokens, for reply models);
- :class:`ContextBuilder`: token ids of a context, newest turns kept within a turn and a token budget;
- :class:`ReplyPrompt`: a reply model's input (and, in training, its target) for one conversation, in the marker
  format (models without a chat template, and every sequence-to-sequence model);
- :class:`ChatPrompt`: conversations in the tokenizer's own chat template (``apply_chat_template``): whole
  conversations with the loss on every assistant turn for training, the prompt of the next reply for inference;
  :data:`CHATML_TEMPLATE` for tokenizers trained offline;
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

#: the chat template of tokenizers trained offline (``bpe-chatml``): ChatML, as Qwen uses, without a default
#: system message
CHATML_TEMPLATE = ("{%- for message in messages %}"
                   "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
                   "{%- endfor %}"
                   "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")
#: our roles in chat-template messages
CHAT_ROLES = {"user": "user", "agent": "assistant"}

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


class ChatTemplateError(ValueError):
    """A chat template that cannot be used the way :class:`ChatPrompt` needs (one line; the data module and the
    model report it under ``data.prompt_format``)."""


def chat_messages(turns: Sequence[Turn], system: str | None = None) -> list[dict]:
    """``turns`` (and a system message first, when given) as chat-template messages: user / assistant."""
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": CHAT_ROLES[t.role], "content": t.text} for t in turns]


class ChatPrompt:
    """Conversations in the tokenizer's own chat template (``tokenizer.apply_chat_template``), for causal models.

    Training: a conversation is one sequence with the loss on every assistant turn (its content and the template's
    end-of-turn token). The assistant spans are found in the rendered text, not by re-tokenizing pieces: the
    template renders ``messages[:k]`` with the generation prompt, which must be a prefix of the whole conversation's
    rendering, and the assistant turn runs from there to the end of its end-of-turn marker; the whole rendering is
    tokenized once and the tokens whose offsets start inside a span are labelled. A conversation longer than
    ``max_length`` is split at user turns, each piece with the system message; a piece whose first exchange alone is
    longer is cut from the left (its reply kept; counted in :attr:`truncated`).

    Inference: the system message and the conversation so far, with the generation prompt; the oldest turns go first
    when it is longer than ``max_length``. Generation stops at :attr:`end_of_turn_id`.

    Args:
        tokenizer: a fast tokenizer with a ``chat_template``.
        system_prompt: the system message of conversations that carry none of their own.
        max_length: tokens of a training sequence, and of a prompt, at most.
    """

    PROBE = "Probe reply 7"

    def __init__(self, tokenizer, system_prompt: str | None = None, max_length: int = 1024):
        if not getattr(tokenizer, "chat_template", None):
            raise ChatTemplateError("the tokenizer has no chat template")
        self.tokenizer, self.system_prompt, self.max_length = tokenizer, system_prompt or None, max_length
        self.split = self.truncated = 0
        self.end_of_turn, self.end_of_turn_id = self._end_of_turn()

    # ------------------------------------------------------------------ the template
    def render(self, messages: list[dict], generation: bool = False) -> str:
        try:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
        except Exception as err:  # noqa: BLE001 - a template's own refusal (e.g. no system role), as one line
            roles = "/".join(m["role"] for m in messages)
            first = (str(err).splitlines() or [type(err).__name__])[0][:160]
            raise ChatTemplateError(f"the chat template cannot render a {roles} conversation ({first})") from None

    def _end_of_turn(self) -> tuple[str, int]:
        """The special token the template closes an assistant turn with (``<|im_end|>``, ``<|eot_id|>``), else EOS."""
        tok = self.tokenizer
        ask = [{"role": "user", "content": "Probe question"}]
        prompt = self.render(ask, generation=True)
        full = self.render(ask + [{"role": "assistant", "content": self.PROBE}])
        if not full.startswith(prompt):
            raise ChatTemplateError("the chat template's generation prompt is not a prefix of the rendered assistant "
                                    "turn, so the assistant's tokens cannot be found")
        rest = full[len(prompt):]
        after = rest[rest.find(self.PROBE) + len(self.PROBE):] if self.PROBE in rest else rest
        special = set(tok.all_special_ids) | {i for i, t in tok.added_tokens_decoder.items() if t.special}
        for token_id in tok(after, add_special_tokens=False)["input_ids"]:
            if token_id in special:
                return tok.convert_ids_to_tokens(token_id), token_id
        if tok.eos_token_id is None:
            raise ChatTemplateError("the chat template ends an assistant turn with no special token and the tokenizer "
                                    "has no EOS token, so generation could not stop")
        return tok.eos_token, tok.eos_token_id

    def messages(self, turns: Sequence[Turn], system: str | None = None) -> list[dict]:
        return chat_messages(turns, system if system is not None else self.system_prompt)

    def _encode(self, messages: list[dict]) -> tuple[list[int], list[int]]:
        """Token ids of a rendered conversation and its loss mask (1 on the assistant turns)."""
        full = self.render(messages)
        spans = []
        for k, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prompt = self.render(messages[:k], generation=True)
            if not full.startswith(prompt):
                raise ChatTemplateError(f"the chat template renders the conversation before assistant turn {k + 1} "
                                        "differently from the whole conversation (template(messages[:k]) is not a "
                                        "prefix of template(messages): it rewrites earlier turns), so the assistant "
                                        "turns cannot be found")
            start = len(prompt)
            content = full.find(message["content"], start)
            search = content + len(message["content"]) if content >= 0 else start
            end = full.find(self.end_of_turn, search)
            if end < 0:  # no marker: the turn runs to the next message's rendering
                following = self.render(messages[:k + 1])
                end = len(following.rstrip()) if full.startswith(following) else len(full)
            else:
                end += len(self.end_of_turn)
            spans.append((start, end))
        enc = self.tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
        mask = [int(any(s <= first < e for s, e in spans) and last > first)
                for first, last in enc["offset_mapping"]]
        return list(enc["input_ids"]), mask

    # ------------------------------------------------------------------ training
    def encode_conversation(self, turns: Sequence[Turn],
                            system: str | None = None) -> list[tuple[list[int], list[int]]]:
        """``(input_ids, loss_mask)`` of a conversation: one sequence, or pieces of at most ``max_length`` tokens
        split before user turns, each with the system message. Pieces without an assistant token are dropped."""
        system = system if system is not None else self.system_prompt
        whole = self._encode(chat_messages(turns, system))
        if len(whole[0]) <= self.max_length:
            return [whole] if any(whole[1]) else []
        blocks, block = [], []
        for turn in turns:  # exchanges: a user turn and what follows it
            if turn.role == "user" and block:
                blocks.append(block)
                block = []
            block.append(turn)
        blocks.append(block)
        pieces, current, encoded = [], [], None
        for block in blocks:
            candidate = self._encode(chat_messages(current + block, system))
            if len(candidate[0]) <= self.max_length:
                current, encoded = current + block, candidate
                continue
            if encoded is not None:
                pieces.append(encoded)
            current, encoded = block, self._encode(chat_messages(block, system))
            if len(encoded[0]) > self.max_length:  # one exchange alone: cut from the left, the reply kept
                self.truncated += 1
                pieces.append((encoded[0][-self.max_length:], encoded[1][-self.max_length:]))
                current, encoded = [], None
        if encoded is not None:
            pieces.append(encoded)
        pieces = [p for p in pieces if any(p[1])]
        self.split += len(pieces) > 1
        return pieces

    # ------------------------------------------------------------------ inference
    def prompt_ids(self, context: Sequence[Turn], system: str | None = None) -> list[int]:
        """The prompt of the next assistant reply: system message, the conversation so far (oldest turns dropped
        while it is longer than ``max_length``), the generation prompt."""
        context = list(context)
        while True:
            text = self.render(self.messages(context, system), generation=True)
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(ids) <= self.max_length or len(context) <= 1:
                return list(ids[-self.max_length:])
            context = context[1:]
