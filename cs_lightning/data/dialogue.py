"""Conversation context: the earlier turns of a conversation rendered with speaker markers, newest kept.

One piece of code for every task that reads context: multi-turn intent recognition joins a message's ``history``
through :func:`render_history`; the token budget is applied by the caller's tokenizer, truncating from the left so the
oldest turns go first.
"""

from __future__ import annotations

from typing import Sequence

from cs_lightning.data.schema import Turn

SPEAKER_MARKERS = {"user": "user:", "agent": "agent:"}


def render_history(turns: Sequence[Turn], max_turns: int | None = None) -> str:
    """The last ``max_turns`` turns, oldest first, each prefixed with its speaker marker."""
    if max_turns is not None:
        turns = turns[-max_turns:] if max_turns > 0 else ()
    return " ".join(f"{SPEAKER_MARKERS[t.role]} {t.text}" for t in turns)
