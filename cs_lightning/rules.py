"""Business rules for generated replies: phrases never to say, elements a reply must contain in given situations,
and patterns a reply must never match.

A rules file (YAML or JSON)::

    blocked_phrases:              # never in a reply; also blocked while generating
      - guaranteed return
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

Evaluation counts violations per rule and the share of replies with at least one (``rule_violation_rate``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from cs_lightning.errors import DataError


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
    _blocked_re: re.Pattern | None = field(default=None, repr=False)

    def __post_init__(self):
        if self.blocked_phrases:
            alternatives = "|".join(re.escape(p) for p in sorted(self.blocked_phrases, key=len, reverse=True))
            self._blocked_re = re.compile(alternatives, re.IGNORECASE)

    @property
    def rule_names(self) -> list[str]:
        return ["blocked_phrase"] * bool(self.blocked_phrases) + [r.name for r in self.required] + \
            [f.name for f in self.forbidden]

    def violations(self, reply: str, context: Sequence = (), intent: str | None = None) -> list[str]:
        """Names of the rules ``reply`` breaks, given the conversation before it (turns with ``role``/``text``)."""
        last_user = next((t.text for t in reversed(context) if t.role == "user"), "")
        broken = []
        if self._blocked_re is not None and self._blocked_re.search(reply):
            broken.append("blocked_phrase")
        broken += [r.name for r in self.required if r.applies(reply, last_user, intent) and not r.pattern.search(reply)]
        broken += [f.name for f in self.forbidden if f.pattern.search(reply)]
        return broken

    def scrub(self, reply: str) -> str:
        """Remove blocked phrases that slipped through generation (another tokenization of the same words)."""
        if self._blocked_re is None:
            return reply
        return " ".join(self._blocked_re.sub("", reply).split())

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
        data = data or {}
        if not isinstance(data, dict):
            raise DataError(path, "the rules file must hold a mapping", fix="see cs_lightning/rules.py for the format")
        unknown = set(data) - {"blocked_phrases", "required", "forbidden_patterns"}
        if unknown:
            names = sorted(k if isinstance(k, str) and k.isprintable() else repr(k) for k in unknown)
            raise DataError(path, f"unknown key(s) {', '.join(names)}", field=names[0],
                            fix="use blocked_phrases, required and forbidden_patterns")

        def line_of(*keys) -> int | None:
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

        blocked = data.get("blocked_phrases") or []
        if not isinstance(blocked, list) or not all(isinstance(p, str) and p.strip() for p in blocked):
            raise DataError(path, "must be a list of non-empty strings", line=line_of("blocked_phrases"),
                            field="blocked_phrases", fix="write one phrase per list item")
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
        return cls(tuple(p.strip() for p in blocked), tuple(required), tuple(forbidden), str(path))
