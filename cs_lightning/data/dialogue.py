"""Conversations: the dialogue reader, and the one context builder every task uses.

A dialogue record is ``{"id", "domain", "turns": [{"role": "user"|"agent", "text"}]}`` (optionally ``"intent"``).
Every agent turn is one reply-generation example whose context is the turns before it. The same
:class:`ContextBuilder` joins a message's ``history`` for multi-turn intent recognition: earlier turns with speaker
markers, at most ``max_turns`` of them and at most a token budget, the newest kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from cs_lightning.data.schema import ROLES, Turn, read_rows
from cs_lightning.errors import DataError

# Plain-text markers suit pretrained encoders (they already know the words); reply models get special tokens.
TEXT_MARKERS = {"user": "user:", "agent": "agent:"}
SPECIAL_MARKERS = {"user": "<|user|>", "agent": "<|agent|>"}


@dataclass(frozen=True)
class Dialogue:
    """One conversation, its turns oldest first."""

    id: str
    domain: str | None
    turns: tuple[Turn, ...]
    intent: str | None = None
    line: int = 0


@dataclass(frozen=True)
class ReplyExample:
    """One agent turn to learn: the turns before it and the reply."""

    id: str
    domain: str | None
    context: tuple[Turn, ...]
    reply: str | None
    intent: str | None = None


def parse_dialogue(row: dict, path: Path, line: int, require_agent: bool = True) -> Dialogue:
    """Validate one dialogue record; errors name the file, line and field."""
    turns = row.get("turns")
    if not isinstance(turns, list) or not turns:
        raise DataError(path, "missing or empty 'turns' list", line=line, field="turns",
                        fix='write {"id": ..., "turns": [{"role": "user", "text": ...}, ...]}')
    parsed = []
    for i, turn in enumerate(turns, start=1):
        if not isinstance(turn, dict):
            raise DataError(path, f"turn {i} is a {type(turn).__name__}, not an object", line=line, field="turns",
                            fix='each turn is {"role": "user"|"agent", "text": ...}')
        role, text = turn.get("role"), turn.get("text")
        if role not in ROLES:
            raise DataError(path, f"turn {i} has unknown role {role!r}", line=line, field="turns.role",
                            fix="use role 'user' or 'agent'")
        if not isinstance(text, str) or not text.strip():
            raise DataError(path, f"turn {i} is empty", line=line, field="turns.text",
                            fix="fill in the turn's text or remove the turn")
        parsed.append(Turn(role, " ".join(text.split())))
    if require_agent and not any(t.role == "agent" for t in parsed):
        raise DataError(path, "dialogue has no agent turn, so nothing to learn from", line=line, field="turns",
                        fix="add the agent's replies, or remove the dialogue")
    domain = row.get("domain") if isinstance(row.get("domain"), str) else None
    intent = row.get("intent") if isinstance(row.get("intent"), str) else None
    return Dialogue(str(row.get("id") or f"{path.name}:{line}"), domain, tuple(parsed), intent, line)


def read_dialogues(path: str | Path, require_agent: bool = True, file_format: str = "jsonl",
                   errors: list | None = None) -> list[Dialogue]:
    """Read and validate a dialogue file.

    Args:
        path: the file (or, for ``sgd``/``crosswoz``, the dataset file, zip or folder).
        require_agent: every dialogue must contain an agent turn (training data); prediction input may end on a
            user turn and need not have one.
        file_format: ``jsonl`` (our format, JSON Lines or a JSON array), ``sgd`` or ``crosswoz`` (read through
            :mod:`cs_lightning.importers`).
        errors: collect the problems of single records here and skip those records, instead of raising the first
            one (``cs-data validate``).
    """
    path = Path(path)
    if file_format == "jsonl":
        rows = read_rows(path, errors)
    else:
        from cs_lightning.importers import IMPORTERS

        if file_format not in IMPORTERS:
            raise DataError(path, f"unknown dialogue format {file_format!r}",
                            fix=f"use jsonl or one of {', '.join(IMPORTERS)}")
        rows = ((i, row) for i, row in enumerate(IMPORTERS[file_format](path), start=1)
                if not require_agent or any(t["role"] == "agent" for t in row["turns"]))
    dialogues, seen = [], {}
    for line, row in rows:
        try:
            dialogue = parse_dialogue(row, path, line, require_agent)
            if dialogue.id in seen:
                raise DataError(path, f"id {dialogue.id!r} repeats the dialogue on line {seen[dialogue.id]}",
                                line=line, field="id", fix="give every dialogue its own id")
        except DataError as err:
            if errors is None:
                raise
            errors.append(err)
            continue
        seen[dialogue.id] = line
        dialogues.append(dialogue)
    if not dialogues and not errors:
        raise DataError(path, "no dialogues", fix="add at least one dialogue")
    return dialogues


def reply_examples(dialogues: Sequence[Dialogue]) -> list[ReplyExample]:
    """Every agent turn that has a context before it, as a training example."""
    examples = []
    for dialogue in dialogues:
        for i, turn in enumerate(dialogue.turns):
            if turn.role == "agent" and i > 0:
                examples.append(ReplyExample(f"{dialogue.id}#{i}", dialogue.domain, dialogue.turns[:i], turn.text,
                                             dialogue.intent))
    return examples


def prediction_examples(dialogues: Sequence[Dialogue]) -> list[ReplyExample]:
    """One example per dialogue: the whole conversation so far is the context of the next agent reply."""
    return [ReplyExample(d.id, d.domain, d.turns, None, d.intent) for d in dialogues]


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
