"""Reading and validating users' data files: CSV/TSV, JSON Lines and JSON arrays, UTF-8.

Every problem is raised as a :class:`~cs_lightning.errors.DataError` naming the file, the line and the field, so a
user sees ``train.csv:17: text: empty text (fill in the message or delete the line)`` instead of a stack trace.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from cs_lightning.errors import DataError
from cs_lightning.prompts import ROLES, Turn

# Column names that other public datasets use for the same thing (Banking77: `category`, KUAKE-QIC: `query`).
TEXT_ALIASES = ("text", "query", "utterance", "sentence", "message", "content")
LABEL_ALIASES = ("label", "category", "intent", "class")
HISTORY_ALIASES = ("history", "context")
ID_ALIASES = ("id", "guid", "uid")

@dataclass(frozen=True)
class IntentRecord:
    """One message to classify, with its earlier turns (oldest first) and, for labelled data, its intent."""

    id: str
    text: str
    label: str | None
    history: tuple[Turn, ...] = ()
    line: int = 0
    domain: str | None = None


@dataclass
class ColumnMap:
    """Which column or key of the user's file holds each field; ``None`` means "find it by its usual names".

    Args:
        text: column of the message text (default: text, query, utterance, sentence, message or content).
        label: column of the intent label (default: label, category, intent or class).
        history: column of the earlier turns (default: history or context); optional.
        id: column of the record id (default: id, guid or uid); optional, else ``file:line``.
    """

    text: str | None = None
    label: str | None = None
    history: str | None = None
    id: str | None = None


def _decode(path: Path) -> str:
    if not path.exists():
        raise DataError(path, "file not found", fix="check the path; relative paths are taken from the working directory")
    if path.is_dir():
        raise DataError(path, "is a folder, not a data file", fix="give the path of a .csv, .tsv, .jsonl or .json file")
    raw = path.read_bytes()
    bom = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
    if not raw[bom:].strip():
        raise DataError(path, "file is empty", fix="give a file with a header line and at least one record")
    try:
        return raw[bom:].decode("utf-8")
    except UnicodeDecodeError as err:
        start = bom + err.start
        line = raw[:start].count(b"\n") + 1
        raise DataError(path, f"not valid UTF-8 (byte 0x{raw[start]:02x})", line=line,
                        fix="re-save the file as UTF-8, e.g. `iconv -f GBK -t UTF-8`") from None


def _names(names, sep: str = ", ") -> str:
    """Names for a one-line message: as they are, or quoted with escapes when they hold a line break or tab."""
    return sep.join(n if n.isprintable() else repr(n) for n in names)


def _report(error: DataError, errors: list | None) -> None:
    """Raise ``error``, or add it to ``errors`` when the caller collects them (``cs-data validate``)."""
    if errors is None:
        raise error
    errors.append(error)


def _rows_csv(path: Path, text: str, delimiter: str, errors: list | None = None) -> Iterator[tuple[int, dict]]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    start = 1
    try:
        header = next(reader)
        header = [h.strip() for h in header]
        if len(set(header)) != len(header) or any(not h for h in header):
            raise DataError(path, f"header has empty or repeated column names: {header}", line=1,
                            fix="the first line must name each column once")
        start = reader.line_num + 1
        for row in reader:
            if not row or all(not c.strip() for c in row):
                start = reader.line_num + 1
                continue
            if len(row) != len(header):
                _report(DataError(path, f"expected {len(header)} fields ({_names(header, delimiter)}) but found "
                                        f"{len(row)}", line=start,
                                  fix="put double quotes around a field that contains the delimiter"), errors)
            else:
                yield start, dict(zip(header, row))
            start = reader.line_num + 1
    except csv.Error as err:  # the parser cannot go on after this
        _report(DataError(path, f"malformed CSV: {err}", line=start,
                          fix='close the quote that opens on this line, or double the " inside a quoted field'), errors)


def _rows_jsonl(path: Path, text: str, errors: list | None = None) -> Iterator[tuple[int, dict]]:
    # lines end at \n, \r\n or \r only: str.splitlines() also splits at U+2028, U+0085... inside JSON strings
    for number, line in enumerate(text.replace("\r\n", "\n").replace("\r", "\n").split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            _report(DataError(path, f"not valid JSON ({err.msg} at column {err.colno})", line=number,
                              fix="each line must be one complete JSON object"), errors)
            continue
        except RecursionError:
            _report(DataError(path, "not valid JSON (nested too deeply)", line=number,
                              fix="each line must be one complete JSON object"), errors)
            continue
        if not isinstance(obj, dict):
            _report(DataError(path, f"a JSON {type(obj).__name__} where an object was expected", line=number,
                              fix='write each record as {"text": ..., "label": ...}'), errors)
            continue
        yield number, obj


def _rows_json_array(path: Path, text: str) -> Iterator[tuple[int, dict]]:
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    first = True
    while True:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        if pos < len(text) and text[pos] == "]":
            return
        if not first:
            if pos >= len(text) or text[pos] != ",":
                raise DataError(path, "not valid JSON (expected ',' or ']' between records)",
                                line=text.count("\n", 0, pos) + 1, fix="check the file is one complete JSON array")
            pos += 1
            while pos < len(text) and text[pos] in " \t\r\n":
                pos += 1
        first = False
        line = text.count("\n", 0, pos) + 1
        try:
            obj, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            raise DataError(path, f"not valid JSON ({err.msg})", line=err.lineno,
                            fix="check the file is one complete JSON array of objects") from None
        except RecursionError:
            raise DataError(path, "not valid JSON (nested too deeply)", line=line,
                            fix="check the file is one complete JSON array of objects") from None
        if not isinstance(obj, dict):
            raise DataError(path, f"a JSON {type(obj).__name__} where an object was expected", line=line,
                            fix='write each record as {"text": ..., "label": ...}')
        yield line, obj


def read_rows(path: str | Path, errors: list | None = None) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, record)`` from a CSV, TSV, JSON Lines or JSON-array file, validating the syntax.
    With ``errors``, problems of single lines are collected there and reading goes on where it can."""
    path = Path(path)
    text = _decode(path)
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        yield from _rows_csv(path, text, "\t" if suffix == ".tsv" else ",", errors)
    elif suffix in (".jsonl", ".json", ".ndjson"):
        if text.lstrip().startswith("["):
            yield from _rows_json_array(path, text)
        else:
            yield from _rows_jsonl(path, text, errors)
    else:
        raise DataError(path, f"unknown file type '{suffix}'", fix="use .csv, .tsv, .jsonl or .json")


def _pick(keys: Sequence[str], wanted: str | None, aliases: Sequence[str]) -> str | None:
    if wanted is not None:
        return wanted if wanted in keys else None
    return next((a for a in aliases if a in keys), None)


def parse_history(value, path: Path, line: int, column: str) -> tuple[Turn, ...]:
    """Earlier turns as written in a file: a JSON list of strings or of ``{"role", "text"}`` objects (in CSV, that
    list JSON-encoded in one cell, or turns separated by ``||``). Plain strings alternate roles backwards from the
    message being classified, which is the user's: the newest earlier turn is the agent's."""
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        stripped = value.strip()
        if stripped.startswith("["):
            try:
                value = json.loads(stripped)
            except (json.JSONDecodeError, RecursionError):
                raise DataError(path, "history is not a valid JSON list", line=line, field=column,
                                fix='write it as ["earlier turn", ...] or separate turns with ||') from None
        else:
            value = [t for t in stripped.split("||")]
    if not isinstance(value, list):
        raise DataError(path, f"history must be a list of turns, got {type(value).__name__}", line=line, field=column,
                        fix='write it as ["earlier turn", ...]')
    turns = []
    for i, item in enumerate(value):
        if isinstance(item, str):
            role = ROLES[(len(value) - i) % 2]  # newest earlier turn (i = len-1) is the agent's
            text = item
        elif isinstance(item, dict):
            role, text = item.get("role"), item.get("text")
            if role not in ROLES:
                raise DataError(path, f"turn {i + 1} has role {role!r}", line=line, field=column,
                                fix="use role 'user' or 'agent'")
        else:
            raise DataError(path, f"turn {i + 1} is a {type(item).__name__}", line=line, field=column,
                            fix='each turn is a string or {"role": ..., "text": ...}')
        if not isinstance(text, str) or not text.strip():
            raise DataError(path, f"turn {i + 1} is empty", line=line, field=column,
                            fix="remove the empty turn or fill in its text")
        turns.append(Turn(role, " ".join(text.split())))
    return tuple(turns)


def read_intent_records(path: str | Path, columns: ColumnMap | None = None,
                        labelled: bool | None = None, errors: list | None = None) -> list[IntentRecord]:
    """Read an intent file into validated records.

    Args:
        path: a CSV, TSV, JSON Lines or JSON-array file.
        columns: which columns hold text, label, history and id.
        labelled: ``True`` requires a label on every record, ``False`` ignores labels (predict input),
            ``None`` accepts a file with labels on every record or on none.
        errors: collect problems here and skip the records they concern, instead of raising the first one.
    """
    path = Path(path)
    records: list[IntentRecord] = []
    state = {"keys": None, "columns": columns or ColumnMap()}
    for line, row in read_rows(path, errors):
        try:
            records.append(_intent_record(path, line, row, state, labelled, records))
        except DataError as err:
            _report(err, errors)
    if not records and not errors:
        raise DataError(path, "no records (only a header or blank lines)", fix="add at least one record")
    return records


def _intent_record(path: Path, line: int, row: dict, state: dict, labelled: bool | None,
                   records: list[IntentRecord]) -> IntentRecord:
    """One validated record (``state`` remembers the column choice for the file's keys)."""
    columns = state["columns"]
    keys = tuple(row)
    if keys != state["keys"]:
        state["keys"] = keys
        state["cols"] = (_pick(keys, columns.text, TEXT_ALIASES), _pick(keys, columns.label, LABEL_ALIASES),
                         _pick(keys, columns.history, HISTORY_ALIASES), _pick(keys, columns.id, ID_ALIASES))
    text_col, label_col, history_col, id_col = state["cols"]
    if text_col is None:
        wanted = columns.text or "text"
        raise DataError(path, f"no '{wanted}' column (found: {_names(keys) or 'none'})", line=line,
                        fix="rename the column, or set data.text_column to the column that holds the message")
    text = row.get(text_col)
    if not isinstance(text, str):
        raise DataError(path, f"expected a string, got {type(text).__name__}", line=line, field=text_col,
                        fix="the message text must be a string")
    text = " ".join(text.split())
    if not text:
        raise DataError(path, "empty text", line=line, field=text_col, fix="fill in the message or delete the line")
    label = None
    if labelled is not False:
        raw_label = row.get(label_col) if label_col else None
        if isinstance(raw_label, (int, float)) and not isinstance(raw_label, bool):
            raw_label = str(raw_label)
        if raw_label is not None and not isinstance(raw_label, str):
            raise DataError(path, f"expected a string label, got {type(raw_label).__name__}", line=line,
                            field=label_col, fix="write the intent name as a string")
        label = raw_label.strip() if raw_label is not None else None
        if not label:
            if labelled or records and records[0].label is not None:
                wanted = columns.label or "label"
                problem = "empty label" if label_col else f"no '{wanted}' column (found: {_names(keys)})"
                raise DataError(path, problem, line=line, field=label_col if label_col else None,
                                fix="give every record an intent label, or set data.label_column")
            label = None
        elif records and records[0].label is None:
            raise DataError(path, "this record has a label but earlier ones have none", line=line, field=label_col,
                            fix="label every record (training data) or none (prediction input)")
    history = parse_history(row.get(history_col), path, line, history_col) if history_col else ()
    rid = row.get(id_col) if id_col else None
    rid = str(rid) if rid not in (None, "") else f"{path.name}:{line}"
    domain = row.get("domain") if isinstance(row.get("domain"), str) else None
    return IntentRecord(rid, text, label, history, line, domain)


def check_known_labels(records: Sequence[IntentRecord], known: Sequence[str], path: str | Path,
                       allowed_extra: Sequence[str] = ()) -> None:
    """Raise on the first record whose label is not among the training labels."""
    known_set = set(known) | set(allowed_extra)
    for rec in records:
        if rec.label is not None and rec.label not in known_set:
            preview = _names(sorted(known)[:8]) + (", ..." if len(known) > 8 else "")
            raise DataError(path, f"label {rec.label!r} never appears in the training data", line=rec.line,
                            field="label", fix=f"fix the label or add training examples for it; known: {preview}")
