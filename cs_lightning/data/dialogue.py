"""Conversations: the dialogue reader and the reply examples taken from it.

A dialogue file holds, one per line, either our record ``{"id", "domain", "turns": [{"role": "user"|"agent",
"text"}]}`` (optionally ``"intent"``) or the messages record chat tools and LLaMA-Factory export, ``{"messages":
[{"role": "system"|"user"|"assistant", "content"}]}`` (optionally ``"id"``, ``"domain"``, ``"intent"``): an
assistant message is our agent turn, a leading system message the dialogue's own system prompt. Every agent turn is
one reply-generation example whose context is the turns before it (the marker format), or the whole dialogue is one
sequence (the chat format). How a context becomes tokens is :mod:`cs_lightning.prompts`, shared with inference.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from cs_lightning.data.schema import read_rows
from cs_lightning.errors import DataError
from cs_lightning.prompts import ROLES, Turn


@dataclass(frozen=True)
class Dialogue:
    """One conversation, its turns oldest first."""

    id: str
    domain: str | None
    turns: tuple[Turn, ...]
    intent: str | None = None
    line: int = 0
    system: str | None = None  # its own system message (messages records)
    from_messages: bool = False  # read from a {"messages": [...]} record (predictions answer in that format)


@dataclass(frozen=True)
class ReplyExample:
    """One agent turn to learn: the turns before it and the reply."""

    id: str
    domain: str | None
    context: tuple[Turn, ...]
    reply: str | None
    intent: str | None = None
    system: str | None = None
    from_messages: bool = False


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


MESSAGE_ROLES = ("system", "user", "assistant")
_MESSAGES_FIX = '{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}'


def parse_messages(row: dict, path: Path, line: int, require_agent: bool = True) -> Dialogue:
    """Validate one messages record (OpenAI / ShareGPT style): an optional system message first, then user and
    assistant messages alternating from a user message, each with non-empty text content."""
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        raise DataError(path, "missing or empty 'messages' list", line=line, field="messages",
                        fix=f"write {_MESSAGES_FIX}")
    system, turns = None, []
    for i, message in enumerate(messages, start=1):
        if not isinstance(message, dict):
            raise DataError(path, f"message {i} is a {type(message).__name__}, not an object", line=line,
                            field="messages", fix='each message is {"role": ..., "content": ...}')
        role, content = message.get("role"), message.get("content")
        if role not in MESSAGE_ROLES:
            raise DataError(path, f"message {i} has unknown role {role!r}", line=line, field="messages.role",
                            fix="use role 'system', 'user' or 'assistant'")
        if not isinstance(content, str):
            raise DataError(path, f"message {i} content is a {type(content).__name__}, not text", line=line,
                            field="messages.content", fix="write the content as one string")
        if not content.strip():
            raise DataError(path, f"message {i} is empty", line=line, field="messages.content",
                            fix="fill in the message's content or remove the message")
        if role == "system":
            if i != 1:
                raise DataError(path, f"message {i} is a system message after the conversation started", line=line,
                                field="messages.role", fix="put the one system message first")
            system = content.strip()
            continue
        expected = "user" if len(turns) % 2 == 0 else "assistant"
        if role != expected:
            raise DataError(path, f"message {i} is from the {role} but the {expected} speaks next (roles must "
                                  "alternate, starting with the user)", line=line, field="messages.role",
                            fix="merge consecutive messages of one speaker, or add the missing turn")
        turns.append(Turn("agent" if role == "assistant" else "user", " ".join(content.split())))
    if not turns:
        raise DataError(path, "only a system message, no conversation", line=line, field="messages",
                        fix="add the user and assistant messages")
    if require_agent and not any(t.role == "agent" for t in turns):
        raise DataError(path, "no assistant message, so nothing to learn from", line=line, field="messages",
                        fix="add the assistant's replies, or remove the conversation")
    domain = row.get("domain") if isinstance(row.get("domain"), str) else None
    intent = row.get("intent") if isinstance(row.get("intent"), str) else None
    return Dialogue(str(row.get("id") or f"{path.name}:{line}"), domain, tuple(turns), intent, line, system,
                    from_messages=True)


def read_dialogues(path: str | Path, require_agent: bool = True, file_format: str = "jsonl",
                   errors: list | None = None, require_assistant_message: bool | None = None) -> list[Dialogue]:
    """Read and validate a dialogue file.

    Args:
        path: the file (or, for ``sgd``/``crosswoz``, the dataset file, zip or folder).
        require_agent: every dialogue must contain an agent turn (training data); prediction input may end on a
            user turn and need not have one.
        file_format: ``jsonl`` (our format, JSON Lines or a JSON array), ``sgd`` or ``crosswoz`` (read through
            :mod:`cs_lightning.importers`).
        errors: collect the problems of single records here and skip those records, instead of raising the first
            one (``cs-data validate``).
        require_assistant_message: messages records must contain an assistant message (default: as
            ``require_agent``; ``cs-data validate`` asks it of every messages record).
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
            if "messages" in row and "turns" not in row:
                needed = require_agent if require_assistant_message is None else require_assistant_message
                dialogue = parse_messages(row, path, line, needed)
            else:
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
                                             dialogue.intent, dialogue.system))
    return examples


def prediction_examples(dialogues: Sequence[Dialogue]) -> list[ReplyExample]:
    """One example per dialogue: the whole conversation so far is the context of the next agent reply."""
    return [ReplyExample(d.id, d.domain, d.turns, None, d.intent, d.system, d.from_messages) for d in dialogues]
