"""Business rules for generated replies: phrases never to say, elements a reply must contain in given situations,
and patterns a reply must never match.

A rules file (YAML or JSON)::

    blocked_phrases:              # never in a reply: generation cannot produce them (see below)
      - guaranteed return
      - 保证
    allow:                        # longer phrases that contain a blocked one and are fine (保证金: a deposit)
      - 保证金
    required:                     # in these situations a reply must match `pattern`
      - name: refund_time_frame
        description: a refund reply states the time frame
        when_intent: [refund_status]      # any of: the dialogue's intent is one of these,
        when_context: "refund|退款"        #   the last user turn matches,
        when_reply: "refund|退款"          #   the reply itself matches
        pattern: "\\d+\\s*(business )?days|\\d+\\s*个?工作日"
    forbidden_patterns:           # a reply must never match
      - name: full_card_number
        pattern: "(?<!\\d)(?:\\d[ -]?){13,19}(?!\\d)"

Evaluation counts violations per rule and the share of replies with at least one (``rule_violation_rate``), on the
replies exactly as generated.

How a blocked phrase matches (:class:`PhraseMatcher`, the one definition used by generation and by evaluation): case
and runs of whitespace are ignored, and so are spaces between Chinese characters (some tokenizers decode
"保 证"); an end of the phrase that is a letter or digit must be a word boundary in the text, so "guaranteed" does
not match "unguaranteed" or "guaranteedly", while Chinese phrases match anywhere ("保证" inside "我们保证您"); an
occurrence inside one of the ``allow`` phrases does not count.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from cs_lightning.errors import DataError
from cs_lightning.prompts import CJK, join_cjk

_CJK_CHAR = re.compile(f"[{CJK}]")


def _is_word(char: str) -> bool:
    """A letter or digit that takes part in English word boundaries (Chinese characters do not)."""
    return char.isalnum() and not _CJK_CHAR.match(char)


def canonical(text: str) -> str:
    """The form phrases are matched in: lower case, whitespace runs as one space, no spaces between CJK characters
    (a space at the end stays: it ends a word)."""
    words = text.lower().split()
    return join_cjk(" ".join(words)) + (" " if words and text[-1].isspace() else "")


class PhraseMatcher:
    """Finds blocked phrases in a text, whole words for letters and digits, outside the allowed phrases.

    ``find(text)`` lists the violations of a finished text. ``find(text, final=False)`` is the question generation
    asks of a text that may still go on: an occurrence that what comes next may still excuse (the end of the text
    could continue the word, or grow into an allowed phrase) is not counted yet, so the constraint bans a token
    exactly when every continuation would break the rule.
    """

    def __init__(self, phrases: Sequence[str], allow: Sequence[str] = ()):
        self.phrases = tuple(dict.fromkeys(p for p in (canonical(x) for x in phrases) if p))
        self.allow = tuple(dict.fromkeys(a for a in (canonical(x) for x in allow) if a))
        # for each phrase, every (allowed phrase, offset) where the phrase sits inside the allowed one
        self._covers = {p: [(a, k) for a in self.allow for k in range(len(a) - len(p) + 1) if a.startswith(p, k)]
                        for p in self.phrases}
        self.longest = max((len(x) for x in self.phrases + self.allow), default=0)

    def __bool__(self) -> bool:
        return bool(self.phrases)

    def find(self, text: str, final: bool = True) -> list[str]:
        """The blocked phrases ``text`` contains (one entry per occurrence), see the class docstring."""
        t = canonical(text)
        found = []
        for p in self.phrases:
            start = t.find(p)
            while start >= 0:
                if self._counts(t, p, start, final):
                    found.append(p)
                start = t.find(p, start + 1)
        return found

    def _counts(self, t: str, p: str, start: int, final: bool) -> bool:
        end = start + len(p)
        if _is_word(p[0]) and start > 0 and _is_word(t[start - 1]):
            return False  # inside a longer word
        if _is_word(p[-1]) and end < len(t) and _is_word(t[end]):
            return False
        pending = not final and _is_word(p[-1]) and end == len(t)  # the next letter may still make it a longer word
        for allowed, offset in self._covers[p]:
            begin = start - offset
            if begin < 0:
                continue
            if t.startswith(allowed, begin):
                return False
            if not final and len(t) < begin + len(allowed) and allowed.startswith(t[begin:]):
                pending = True  # may still become the allowed phrase
        return not pending


@dataclass(frozen=True)
class RequiredRule:
    """In the situations it names, a reply must match ``pattern``."""

    name: str
    pattern: re.Pattern
    when_intent: tuple[str, ...] = ()
    when_context: re.Pattern | None = None
    when_reply: re.Pattern | None = None
    description: str = ""

    def applies(self, reply: str, last_user: str, intent: str | None) -> bool:
        return bool((intent and intent in self.when_intent)
                    or (self.when_context is not None and self.when_context.search(last_user))
                    or (self.when_reply is not None and self.when_reply.search(reply)))


@dataclass(frozen=True)
class ForbiddenPattern:
    """A reply must never match ``pattern``."""

    name: str
    pattern: re.Pattern
    description: str = ""


@dataclass
class BusinessRules:
    """The rules of one domain; see the module docstring for the file format."""

    blocked_phrases: tuple[str, ...] = ()
    required: tuple[RequiredRule, ...] = ()
    forbidden: tuple[ForbiddenPattern, ...] = ()
    source: str = ""
    allow: tuple[str, ...] = ()
    blocked: PhraseMatcher = field(init=False, repr=False)

    def __post_init__(self):
        self.blocked = PhraseMatcher(self.blocked_phrases, self.allow)

    @property
    def rule_names(self) -> list[str]:
        return ["blocked_phrase"] * bool(self.blocked_phrases) + [r.name for r in self.required] + \
            [f.name for f in self.forbidden]

    def violations(self, reply: str, context: Sequence = (), intent: str | None = None) -> list[str]:
        """Names of the rules ``reply`` breaks, given the conversation before it (turns with ``role``/``text``)."""
        last_user = next((t.text for t in reversed(context) if t.role == "user"), "")
        broken = []
        if self.blocked and self.blocked.find(reply):
            broken.append("blocked_phrase")
        broken += [r.name for r in self.required if r.applies(reply, last_user, intent) and not r.pattern.search(reply)]
        broken += [f.name for f in self.forbidden if f.pattern.search(reply)]
        return broken

    @classmethod
    def load(cls, path: str | Path) -> "BusinessRules":
        """Read and validate a YAML or JSON rules file; errors name the file, line and field."""
        import yaml

        path = Path(path)
        if not path.exists():
            raise DataError(path, "rules file not found", fix="check data.rules_file")
        if path.is_dir():
            raise DataError(path, "is a folder, not a rules file", fix="give the path of a .yaml or .json file")
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as err:
            start = err.start + (3 if raw.startswith(b"\xef\xbb\xbf") else 0)
            raise DataError(path, f"not valid UTF-8 (byte 0x{raw[start]:02x})", line=raw[:start].count(b"\n") + 1,
                            fix="re-save the file as UTF-8") from None
        is_yaml = path.suffix.lower() in (".yaml", ".yml")
        try:
            root = yaml.compose(text) if is_yaml else None
            data = yaml.safe_load(text) if is_yaml else json.loads(text)
        except (yaml.YAMLError, json.JSONDecodeError, RecursionError) as err:
            line = getattr(getattr(err, "problem_mark", None), "line", None)
            line = line + 1 if line is not None else getattr(err, "lineno", None)
            raise DataError(path, f"not valid {'YAML' if is_yaml else 'JSON'}" +
                            (" (nested too deeply)" if isinstance(err, RecursionError) else ""),
                            line=line, fix="check the syntax of the rules file") from None
        return cls._from_data(data, path, lambda *keys: _line_of(root, *keys))

    @classmethod
    def from_dict(cls, data: dict | None, source: str = "rules") -> "BusinessRules":
        """Rules from their parsed content (as an export's ``cs_lightning.json`` carries it), checked as a file is;
        errors name ``source``."""
        return cls._from_data(data, Path(source), lambda *keys: None)

    def as_dict(self) -> dict:
        """The content of a rules file for these rules (``from_dict`` reads it back)."""
        return {"blocked_phrases": list(self.blocked_phrases), "allow": list(self.allow),
                "required": [{"name": r.name, "pattern": r.pattern.pattern, "when_intent": list(r.when_intent),
                              **({"when_context": r.when_context.pattern} if r.when_context else {}),
                              **({"when_reply": r.when_reply.pattern} if r.when_reply else {}),
                              "description": r.description} for r in self.required],
                "forbidden_patterns": [{"name": f.name, "pattern": f.pattern.pattern, "description": f.description}
                                       for f in self.forbidden]}

    @classmethod
    def _from_data(cls, data, path: Path, line_of) -> "BusinessRules":
        data = data or {}
        if not isinstance(data, dict):
            raise DataError(path, "the rules file must hold a mapping", fix="see cs_lightning/rules.py for the format")
        unknown = set(data) - {"blocked_phrases", "allow", "required", "forbidden_patterns"}
        if unknown:
            names = sorted(k if isinstance(k, str) and k.isprintable() else repr(k) for k in unknown)
            raise DataError(path, f"unknown key(s) {', '.join(names)}", field=names[0],
                            fix="use blocked_phrases, allow, required and forbidden_patterns")

        def regex(value, *keys) -> re.Pattern:
            where = ".".join(str(k) for k in keys)
            if not isinstance(value, str) or not value:
                raise DataError(path, "expected a regular expression string", line=line_of(*keys), field=where,
                                fix="write the pattern as a quoted string")
            try:
                return re.compile(value, re.IGNORECASE)
            except (re.error, OverflowError, RecursionError) as err:
                raise DataError(path, f"invalid regular expression: {err}", line=line_of(*keys), field=where,
                                fix="escape special characters such as ( [ + ? with a backslash") from None

        phrase_lists = {}
        for key in ("blocked_phrases", "allow"):
            items = data.get(key) or []
            if not isinstance(items, list) or not all(isinstance(p, str) and p.strip() for p in items):
                raise DataError(path, "must be a list of non-empty strings", line=line_of(key), field=key,
                                fix="write one phrase per list item")
            phrase_lists[key] = tuple(p.strip() for p in items)
        for key in ("required", "forbidden_patterns"):
            if not isinstance(data.get(key) or [], list):
                raise DataError(path, "must be a list of rules", line=line_of(key), field=key,
                                fix="write one rule per list item, each with name: and pattern:")
        required = []
        for i, item in enumerate(data.get("required") or []):
            if not isinstance(item, dict) or "name" not in item or "pattern" not in item:
                raise DataError(path, "each required rule needs a name and a pattern", line=line_of("required", i),
                                field=f"required.{i}", fix="add name: and pattern:")
            intents = item.get("when_intent") or []
            if not (isinstance(intents, str) or isinstance(intents, list) and all(isinstance(x, str) for x in intents)):
                raise DataError(path, "must be an intent name or a list of intent names",
                                line=line_of("required", i, "when_intent"), field=f"required.{i}.when_intent",
                                fix="write when_intent: [refund_status, ...]")
            required.append(RequiredRule(
                str(item["name"]), regex(item["pattern"], "required", i, "pattern"),
                tuple([intents] if isinstance(intents, str) else intents),
                regex(item["when_context"], "required", i, "when_context") if item.get("when_context") else None,
                regex(item["when_reply"], "required", i, "when_reply") if item.get("when_reply") else None,
                str(item.get("description", ""))))
        forbidden = []
        for i, item in enumerate(data.get("forbidden_patterns") or []):
            if not isinstance(item, dict) or "name" not in item or "pattern" not in item:
                raise DataError(path, "each forbidden pattern needs a name and a pattern",
                                line=line_of("forbidden_patterns", i), field=f"forbidden_patterns.{i}",
                                fix="add name: and pattern:")
            forbidden.append(ForbiddenPattern(str(item["name"]), regex(item["pattern"], "forbidden_patterns", i, "pattern"),
                                              str(item.get("description", ""))))
        return cls(phrase_lists["blocked_phrases"], tuple(required), tuple(forbidden), str(path),
                   allow=phrase_lists["allow"])


def _line_of(root, *keys) -> int | None:
    """The line of the YAML node at ``keys`` (mapping keys and list indices), or None."""
    node = root
    try:
        for key in keys:
            if isinstance(key, int):
                node = node.value[key]
            else:
                node = next(v for k, v in node.value if k.value == key)
        return node.start_mark.line + 1
    except (AttributeError, IndexError, StopIteration, TypeError):
        return None
