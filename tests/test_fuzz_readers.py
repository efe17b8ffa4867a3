"""Fuzzing the readers: whatever a file holds, a reader returns records or raises one of the documented errors
(:mod:`cs_lightning.errors`) as one line that names the file; never a KeyError, TypeError, UnicodeDecodeError...

Each reader gets (a) random bytes and (b) a valid file with broken lines or fields mixed in: truncated JSON, wrong
types where strings belong, missing and extra fields, empty text, extra columns, another delimiter, invalid UTF-8,
a BOM, CRLF. Valid files must also read back exactly what was written.
"""

import csv
import io
import json
import os
import tempfile
import zipfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cs_lightning.data.dialogue import read_dialogues
from cs_lightning.data.schema import ROLES, ColumnMap, check_known_labels, read_intent_records
from cs_lightning.errors import CSLightningError, DataError
from cs_lightning.importers import import_clinc150, import_crosswoz, import_sgd
from cs_lightning.rules import BusinessRules


def fuzz(n: int):
    """Hypothesis settings for ``n`` examples (times $FUZZ_SCALE, for a longer hunt: the slow run uses 10).

    Replayable: under CI the default budget is derandomised (the same examples every run, so a red CI replays
    anywhere); every other run draws new examples and a failure prints the ``@reproduce_failure`` line that replays
    it. function_scoped_fixture: conftest's autouse fixture is harmless here, as each example writes to its own
    TemporaryDirectory."""
    scale = int(os.environ.get("FUZZ_SCALE", "1"))
    return settings(max_examples=n * scale, deadline=None, database=None, print_blob=True,
                    derandomize=bool(os.environ.get("CI")) and scale == 1,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large, HealthCheck.filter_too_much])


# ---------------------------------------------------------------------------------------------------- checking

def check_error(err: BaseException, path: Path) -> None:
    """A documented error, one line, naming the file."""
    assert isinstance(err, CSLightningError), repr(err)
    message = str(err)
    assert message and len(message.splitlines()) == 1 and "\n" not in message and "\r" not in message, repr(message)
    assert str(path) in message, message
    if isinstance(err, DataError):
        assert message.startswith(err.path) and Path(err.path) == path, message


def outcome(read, path: Path):
    """What ``read(path)`` returns, or None after checking the documented error it raised (any other escapes)."""
    try:
        return read(path)
    except CSLightningError as err:
        check_error(err, path)
        return None


def one_line(text: str) -> str:
    return " ".join(text.split())


def read_intents(path: Path, columns: ColumnMap | None = None, labelled: bool | None = None):
    """Read strictly and collecting errors (``cs-data validate``); both must agree and give well-formed records."""
    records = outcome(lambda p: read_intent_records(p, columns, labelled), path)
    found: list = []
    collected = outcome(lambda p: read_intent_records(p, columns, labelled, errors=found), path)
    for err in found:
        check_error(err, path)
    if records is not None:
        assert collected == records and not found
        assert records
        for rec in records:
            assert isinstance(rec.text, str) and rec.text and rec.text == one_line(rec.text)
            assert rec.label is None or (isinstance(rec.label, str) and rec.label == rec.label.strip() and rec.label)
            assert labelled is not False or rec.label is None
            assert isinstance(rec.id, str)
            assert all(t.role in ROLES and t.text and t.text == one_line(t.text) for t in rec.history)
        labels = [r.label for r in records if r.label is not None]
        outcome(lambda p: check_known_labels(records, labels[: len(labels) // 2], p), path)
    else:
        assert collected is None or found
    return records


def read_all_dialogues(path: Path, file_format: str, require_agent: bool):
    dialogues = outcome(lambda p: read_dialogues(p, require_agent, file_format), path)
    if dialogues is not None:
        assert dialogues and len({d.id for d in dialogues}) == len(dialogues)
        for d in dialogues:
            assert isinstance(d.id, str) and d.turns
            assert all(t.role in ROLES and t.text and t.text == one_line(t.text) for t in d.turns)
            assert not require_agent or any(t.role == "agent" for t in d.turns)
    return dialogues


def load_rules(path: Path):
    rules = outcome(BusinessRules.load, path)
    if rules is not None:
        assert isinstance(rules.violations("your refund arrives in 5 business days", (), "refund"), list)
        assert isinstance(rules.blocked.find("a guaranteed return", final=False), list)
        assert BusinessRules.from_dict(rules.as_dict()).as_dict() == rules.as_dict()  # what exports carry
    return rules


# ---------------------------------------------------------------------------------------------------- strategies

SAMPLES = ["hello", "where is my parcel", "我的快递到哪了", "退款", "a,b", 'say "hi"', "tab\there", "line\nbreak",
           "cr\r\nlf", "u\u2028v", "nel\x85x", "emoji 📦", "back\\slash", "{\"json\": 1}", "[1, 2", "a||b", "NaN"]
texts = st.one_of(st.sampled_from(SAMPLES), st.text(min_size=1, max_size=20)).filter(lambda s: s.split())
labels = st.one_of(st.sampled_from(["refund", "delivery", "login", "退款", "oos", "a b"]),
                   st.text(min_size=1, max_size=10)).filter(lambda s: s.strip())
leaf_junk = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.just(""),
                      st.just("   "), st.text(max_size=12), st.sampled_from(SAMPLES))
junk = st.recursive(leaf_junk, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                    max_leaves=6)
DEEP = "[" * 3000 + "]" * 3000


def mutate(data, obj, depth: int = 0):
    """``obj`` with one thing changed somewhere inside: a value of another type, a key removed or added, an item
    dropped or added."""
    if isinstance(obj, (dict, list)) and obj and depth < 6:
        op = data.draw(st.sampled_from(["into", "into", "replace", "delete", "add"]))
        if isinstance(obj, dict):
            slot, new = data.draw(st.sampled_from(sorted(obj, key=str))), dict(obj)
        else:
            slot, new = data.draw(st.integers(0, len(obj) - 1)), list(obj)
        if op == "into":
            new[slot] = mutate(data, obj[slot], depth + 1)
        elif op == "replace":
            new[slot] = data.draw(junk)
        elif op == "delete":
            del new[slot]
        elif isinstance(new, dict):
            new[data.draw(st.one_of(st.text(max_size=8), st.sampled_from(["id", "text", "label", "turns"])))] = \
                data.draw(junk)
        else:
            new.insert(slot, data.draw(junk))
        return new
    return data.draw(junk)


def mutate_some(data, obj, most: int = 3):
    for _ in range(data.draw(st.integers(0, most))):
        obj = mutate(data, obj)
    return obj


BAD_BYTES = [b"\xff", b"\xfe\xff", b"\xc3", b"\xe4\xbd", b"\x80\x80", "退款".encode("gbk"), b"\x00", b"\xef\xbb\xbf"]


def corrupt(data, raw: bytes) -> bytes:
    """The bytes of a file after the accidents files meet: BOM, CRLF or CR line ends, invalid UTF-8 or another
    encoding, truncation, a line doubled or dropped."""
    for op in data.draw(st.lists(st.sampled_from(["bom", "crlf", "cr", "bad", "gbk", "utf16", "truncate", "cut",
                                                  "double"]), max_size=2)):
        if op == "bom":
            raw = b"\xef\xbb\xbf" + raw
        elif op == "crlf":
            raw = raw.replace(b"\n", b"\r\n")
        elif op == "cr":
            raw = raw.replace(b"\n", b"\r")
        elif op == "bad":
            at = data.draw(st.integers(0, len(raw)))
            raw = raw[:at] + data.draw(st.sampled_from(BAD_BYTES)) + raw[at:]
        elif op in ("gbk", "utf16"):
            try:
                raw = raw.decode("utf-8").encode("gbk" if op == "gbk" else "utf-16")
            except (UnicodeDecodeError, UnicodeEncodeError):
                pass
        elif op == "truncate":
            raw = raw[: data.draw(st.integers(0, len(raw)))]
        else:
            lines = raw.split(b"\n")
            i = data.draw(st.integers(0, len(lines) - 1))
            lines[i:i + 1] = [] if op == "cut" else [lines[i], lines[i]]
            raw = b"\n".join(lines)
    return raw


random_bytes = st.one_of(st.binary(max_size=300), st.text(max_size=200).map(str.encode),
                         st.lists(st.sampled_from([b"[", b"]", b"{", b"}", b'"', b",", b":", b"\n", b"\r\n", b"\t",
                                                   b"text", b"label", b"-", b" ", b"\xef\xbb\xbf", b"\xff", b"1",
                                                   b"null", b"turns"]), max_size=40).map(b"".join),
                         st.just(DEEP.encode()), st.just(b"\xef\xbb\xbf"), st.just(b"\xef\xbb\xbf \n"))


def write(folder: str, name: str, raw: bytes) -> Path:
    path = Path(folder) / name
    path.write_bytes(raw)
    return path


# ---------------------------------------------------------------------------------------------------- intent files

@st.composite
def intent_records(draw, labelled: bool = True):
    rec = {"text": draw(texts)}
    if labelled:
        rec["label"] = draw(labels)
    if draw(st.booleans()):
        rec["id"] = draw(st.text(alphabet="abc123-_", min_size=1, max_size=6))
    if draw(st.booleans()):
        rec["history"] = draw(st.lists(st.one_of(texts, st.fixed_dictionaries({"role": st.sampled_from(ROLES),
                                                                                "text": texts})), max_size=3))
    return rec


def expected_intents(records: list[dict]) -> list[tuple]:
    return [(one_line(r["text"]), r["label"].strip() if "label" in r else None) for r in records]


def broken_json_line(data, valid: dict) -> str:
    kind = data.draw(st.sampled_from(["truncated", "mutated", "mutated", "empty_text", "wrong_text", "wrong_label",
                                      "wrong_history", "not_object", "text", "deep", "blank"]))
    if kind == "truncated":
        full = json.dumps(valid)
        return full[: data.draw(st.integers(1, len(full) - 1))]
    if kind == "mutated":
        return json.dumps(mutate_some(data, valid, 2))
    if kind == "empty_text":
        return json.dumps({**valid, "text": data.draw(st.sampled_from(["", "  ", "\n\t", "\u3000"]))})
    if kind == "wrong_text":
        return json.dumps({**valid, "text": data.draw(junk)})
    if kind == "wrong_label":
        return json.dumps({**valid, "label": data.draw(junk)})
    if kind == "wrong_history":
        history = data.draw(st.one_of(junk, st.sampled_from(["[1, 2", "[5]", '[{"role": "bot", "text": "x"}]', "||",
                                                            "a||", "[" * 3000, DEEP])))
        return json.dumps({**valid, "history": history})
    if kind == "not_object":
        return json.dumps(data.draw(junk))
    if kind == "text":
        return data.draw(st.text(max_size=30))
    if kind == "deep":
        return DEEP
    return ""


@fuzz(80)
@given(data=st.data(), suffix=st.sampled_from([".jsonl", ".json"]), array=st.booleans(),
       labelled=st.sampled_from([True, False, None]))
def test_intent_json_with_broken_lines(data, suffix, array, labelled):
    records = data.draw(st.lists(intent_records(), min_size=1, max_size=5))
    lines = [json.dumps(r, ensure_ascii=data.draw(st.booleans())) for r in records]
    for _ in range(data.draw(st.integers(0, 3))):
        lines.insert(data.draw(st.integers(0, len(lines))), broken_json_line(data, data.draw(st.sampled_from(records))))
    text = "[\n" + ",\n".join(lines) + "\n]\n" if array else "\n".join(lines) + "\n"
    with tempfile.TemporaryDirectory() as folder:
        read_intents(write(folder, "x" + suffix, corrupt(data, text.encode())), labelled=labelled)


@fuzz(60)
@given(data=st.data(), array=st.booleans(), ensure_ascii=st.booleans(), crlf=st.booleans(), bom=st.booleans())
def test_valid_intent_json_reads_back(data, array, ensure_ascii, crlf, bom):
    records = data.draw(st.lists(intent_records(), min_size=1, max_size=6))
    lines = [json.dumps(r, ensure_ascii=ensure_ascii) for r in records]
    eol = "\r\n" if crlf else "\n"
    text = ("[" + eol + ("," + eol).join(lines) + eol + "]" if array else eol.join(lines)) + eol
    with tempfile.TemporaryDirectory() as folder:
        path = write(folder, "x.jsonl", (b"\xef\xbb\xbf" if bom else b"") + text.encode())
        got = read_intent_records(path, labelled=True)
    assert [(r.text, r.label) for r in got] == expected_intents(records)
    assert [len(r.history) for r in got] == [len(r.get("history", [])) for r in records]


def csv_text(rows: list[list[str]], delimiter: str, eol: str) -> str:
    """Rows as CSV lines ending in ``eol``; a field holding \\r or \\n is quoted (csv.writer quotes only the
    characters of its lineterminator, so it is given both)."""
    out = []
    for row in rows:
        buf = io.StringIO()
        csv.writer(buf, delimiter=delimiter, lineterminator="\r\n").writerow(row)
        out.append(buf.getvalue()[:-2] + eol)
    return "".join(out)


@fuzz(80)
@given(data=st.data(), suffix=st.sampled_from([".csv", ".tsv"]), labelled=st.sampled_from([True, False, None]),
       header=st.sampled_from([["text", "label"], ["query", "category"], ["id", "text", "label", "history"],
                               ["text"], ["text", "text"], ["", "label"], ["message", "label"],
                               ["text", "label", "extra"]]))
def test_intent_csv_with_broken_lines(data, suffix, labelled, header):
    delimiter = "\t" if suffix == ".tsv" else ","
    eol = data.draw(st.sampled_from(["\n", "\r\n"]))
    cells = {"text": texts, "query": texts, "message": texts, "label": labels, "category": labels,
             "id": st.text(alphabet="abc123", max_size=4), "extra": st.text(max_size=5),
             "history": st.lists(texts, max_size=2).map(json.dumps), "": texts}
    rows = data.draw(st.lists(st.tuples(*[cells[h] for h in header]).map(list), min_size=1, max_size=5))
    lines = [csv_text([row], delimiter, eol) for row in [header] + rows]
    for _ in range(data.draw(st.integers(0, 3))):
        row = list(data.draw(st.sampled_from(rows)))
        kind = data.draw(st.sampled_from(["extra", "missing", "delimiter", "quote", "empty_text", "history", "text",
                                          "blank"]))
        if kind == "extra":
            line = csv_text([row + data.draw(st.lists(st.text(max_size=5), min_size=1, max_size=2))], delimiter, eol)
        elif kind == "missing":
            line = csv_text([row[:-1]], delimiter, eol)
        elif kind == "delimiter":
            line = data.draw(st.sampled_from([";", "|", "\t" if delimiter == "," else ","])).join(row) + eol
        elif kind == "quote":
            line = '"' + delimiter.join(row) + eol
        elif kind == "empty_text":
            line = csv_text([[data.draw(st.sampled_from(["", " ", "\u3000"]))] + row[1:]], delimiter, eol)
        elif kind == "history":
            bad = data.draw(st.sampled_from(["[1, 2", "[5]", '[{"role": "bot", "text": "x"}]', "||", "a||", "[null]",
                                             "{}", "[" * 3000, DEEP]))
            line = csv_text([row[:-1] + [bad]], delimiter, eol)
        elif kind == "text":
            line = data.draw(st.text(max_size=30)) + eol
        else:
            line = eol
        lines.insert(data.draw(st.integers(1, len(lines))), line)
    columns = data.draw(st.sampled_from([None, ColumnMap(), ColumnMap(text="message"), ColumnMap(label="nope"),
                                         ColumnMap(history="text")]))
    with tempfile.TemporaryDirectory() as folder:
        read_intents(write(folder, "x" + suffix, corrupt(data, "".join(lines).encode())), columns, labelled)


@fuzz(60)
@given(data=st.data(), suffix=st.sampled_from([".csv", ".tsv"]), eol=st.sampled_from(["\n", "\r\n"]),
       bom=st.booleans())
def test_valid_intent_csv_reads_back(data, suffix, eol, bom):
    records = data.draw(st.lists(intent_records(), min_size=1, max_size=6))
    rows = [["id", "text", "label"]] + [[r.get("id", ""), r["text"], r["label"]] for r in records]
    text = csv_text(rows, "\t" if suffix == ".tsv" else ",", eol)
    with tempfile.TemporaryDirectory() as folder:
        got = read_intent_records(write(folder, "x" + suffix, (b"\xef\xbb\xbf" if bom else b"") + text.encode()))
    assert [(r.text, r.label) for r in got] == expected_intents(records)


# ---------------------------------------------------------------------------------------------------- dialogues

@st.composite
def dialogues(draw):
    turns = draw(st.lists(st.fixed_dictionaries({"role": st.sampled_from(ROLES), "text": texts}), min_size=1,
                          max_size=4))
    dialogue = {"id": "", "domain": draw(st.sampled_from(["ecommerce", "银行", ""])), "turns": turns}
    if draw(st.booleans()):
        dialogue["intent"] = draw(labels)
    return dialogue


def numbered(items: list[dict]) -> list[dict]:
    return [{**d, "id": f"d{i}"} for i, d in enumerate(items)]


@fuzz(80)
@given(data=st.data(), array=st.booleans(), require_agent=st.booleans())
def test_dialogue_file_with_broken_lines(data, array, require_agent):
    items = numbered(data.draw(st.lists(dialogues(), min_size=1, max_size=4)))
    lines = [json.dumps(d, ensure_ascii=data.draw(st.booleans())) for d in items]
    for _ in range(data.draw(st.integers(0, 3))):
        valid = data.draw(st.sampled_from(items))
        kind = data.draw(st.sampled_from(["broken", "broken", "duplicate", "turn"]))
        if kind == "duplicate":
            line = json.dumps(valid)
        elif kind == "turn":
            bad = data.draw(st.one_of(junk, st.fixed_dictionaries({"role": st.one_of(junk, st.just("bot")),
                                                                   "text": junk})))
            line = json.dumps({**valid, "turns": valid["turns"] + [bad]})
        else:
            line = broken_json_line(data, valid)
        lines.insert(data.draw(st.integers(0, len(lines))), line)
    text = "[\n" + ",\n".join(lines) + "\n]\n" if array else "\n".join(lines) + "\n"
    with tempfile.TemporaryDirectory() as folder:
        read_all_dialogues(write(folder, "d.jsonl", corrupt(data, text.encode())), "jsonl", require_agent)


@fuzz(50)
@given(data=st.data(), array=st.booleans(), ensure_ascii=st.booleans())
def test_valid_dialogues_read_back(data, array, ensure_ascii):
    items = numbered(data.draw(st.lists(dialogues(), min_size=1, max_size=5)))
    lines = [json.dumps(d, ensure_ascii=ensure_ascii) for d in items]
    text = "[\n" + ",\n".join(lines) + "\n]\n" if array else "\n".join(lines) + "\n"
    with tempfile.TemporaryDirectory() as folder:
        got = read_dialogues(write(folder, "d.jsonl", text.encode()), require_agent=False)
    assert [[(t.role, t.text) for t in d.turns] for d in got] == \
        [[(t["role"], one_line(t["text"])) for t in d["turns"]] for d in items]


# ---------------------------------------------------------------------------------------------------- importers

@st.composite
def sgd_files(draw):
    out = []
    for i in range(draw(st.integers(1, 3))):
        intent = st.sampled_from(["NONE", "Pay"])
        turns = [{"speaker": speaker, "utterance": draw(texts),
                  "frames": [{"service": "Banks_1", "state": {"active_intent": draw(intent)}}]}
                 for speaker in draw(st.lists(st.sampled_from(["USER", "SYSTEM"]), min_size=1, max_size=4))]
        out.append({"dialogue_id": f"1_{i:05d}", "services": draw(st.lists(st.sampled_from(["Banks_1", "Events_2"]),
                                                                           min_size=1, max_size=2)), "turns": turns})
    return out


@st.composite
def crosswoz_files(draw):
    out = {}
    for i in range(draw(st.integers(1, 3))):
        out[str(1000 + i)] = {"type": "单领域", "messages": [
            {"content": draw(texts), "role": role, "dialog_act": [["Inform", draw(st.sampled_from(["酒店", "餐馆"])),
                                                                   "名称", "x"]]}
            for role in draw(st.lists(st.sampled_from(["usr", "sys"]), min_size=1, max_size=4))]}
    return out


@st.composite
def clinc_files(draw):
    pairs = st.lists(st.tuples(texts, labels).map(list), max_size=3)
    return {split: draw(pairs) for split in ("train", "val", "test", "oos_train", "oos_val", "oos_test")}


def zipped(raw: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("val.json", raw)
    return buf.getvalue()


def corrupt_zip(data, raw: bytes) -> bytes:
    for op in data.draw(st.lists(st.sampled_from(["flip", "truncate", "cut"]), max_size=2)):
        at = data.draw(st.integers(0, max(len(raw) - 1, 0)))
        if op == "flip" and raw:
            raw = raw[:at] + bytes([raw[at] ^ data.draw(st.integers(1, 255))]) + raw[at + 1:]
        elif op == "truncate":
            raw = raw[:at]
        else:
            raw = raw[:at] + raw[at + data.draw(st.integers(1, 8)):]
    return raw


@fuzz(80)
@given(data=st.data(), fmt=st.sampled_from(["sgd", "crosswoz", "crosswoz.zip", "clinc150"]),
       require_agent=st.booleans())
def test_importers_with_broken_fields(data, fmt, require_agent):
    valid = data.draw({"sgd": sgd_files(), "crosswoz": crosswoz_files(), "crosswoz.zip": crosswoz_files(),
                       "clinc150": clinc_files()}[fmt])
    raw = corrupt(data, json.dumps(mutate_some(data, valid), ensure_ascii=data.draw(st.booleans())).encode())
    name = {"sgd": "dialogues_001.json", "crosswoz": "val.json", "crosswoz.zip": "val.json.zip",
            "clinc150": "data_full.json"}[fmt]
    if fmt == "crosswoz.zip":
        raw = corrupt_zip(data, zipped(raw))
    with tempfile.TemporaryDirectory() as folder:
        path = write(folder, name, raw)
        if fmt == "clinc150":
            splits = outcome(import_clinc150, path)
            if splits is not None:
                assert set(splits) == {"train", "val", "test"}
                assert all(isinstance(r["text"], str) and isinstance(r["label"], str) for s in splits.values()
                           for r in s)
        else:
            fmt = fmt.split(".")[0]
            outcome(lambda p: list((import_sgd if fmt == "sgd" else import_crosswoz)(p)), path)
            read_all_dialogues(path, fmt, require_agent)


# ---------------------------------------------------------------------------------------------------- rules

@st.composite
def rules_files(draw):
    regex = st.sampled_from(["refund|退款", r"\d+\s*(business )?days", "(?<!\\d)(?:\\d[ -]?){13,19}(?!\\d)", "x"])
    return {
        "blocked_phrases": draw(st.lists(st.sampled_from(["guaranteed return", "保证收益", "trust me"]), max_size=2)),
        "required": [{"name": "refund_time_frame", "description": "states the time frame",
                      "when_intent": draw(st.one_of(st.just("refund"), st.lists(labels, max_size=2))),
                      "when_context": draw(regex), "when_reply": draw(regex), "pattern": draw(regex)}],
        "forbidden_patterns": [{"name": "card", "pattern": draw(regex)}],
    }


BAD_REGEX = ["(", "[z-a]", "a{4294967296}", "(" * 3000 + ")" * 3000, "*", "\\", "(?P<a"]
YAML_LINES = ["key: [unclosed", "\t- tab", "!!python/object/apply:os.system ['x']", "a: &x [*x]", "? [a, b]\n: c",
              "- - -", "::", "1: 2", "null: x", "%YAML 9.9", "---\n---", "@x", "\"\\xZZ\"", "[" * 3000]


@fuzz(80)
@given(data=st.data(), suffix=st.sampled_from([".yaml", ".yml", ".json"]))
def test_rules_with_broken_fields(data, suffix):
    rules = data.draw(rules_files())
    for _ in range(data.draw(st.integers(0, 2))):
        if data.draw(st.booleans()):
            rules = mutate(data, rules)
        else:  # a bad regular expression where one belongs
            rules = {**rules, "forbidden_patterns": [{"name": "bad", "pattern": data.draw(st.sampled_from(BAD_REGEX))}]}
    if suffix == ".json":
        text = json.dumps(rules, ensure_ascii=data.draw(st.booleans()))
    else:
        text = yaml.safe_dump(rules, allow_unicode=data.draw(st.booleans()))
        lines = text.splitlines()
        for _ in range(data.draw(st.integers(0, 2))):
            lines.insert(data.draw(st.integers(0, len(lines))), data.draw(st.sampled_from(YAML_LINES)))
        text = "\n".join(lines) + "\n"
    with tempfile.TemporaryDirectory() as folder:
        load_rules(write(folder, "rules" + suffix, corrupt(data, text.encode())))


def test_empty_and_comment_only_yaml_rules_are_no_rules():
    with tempfile.TemporaryDirectory() as folder:
        for text in ("", "# no rules yet\n", "blocked_phrases: []\n"):
            assert BusinessRules.load(write(folder, "rules.yaml", text.encode())).rule_names == []


# ---------------------------------------------------------------------------------------------------- random bytes

READERS = {
    "intent.csv": lambda p: read_intents(p),
    "intent.tsv": lambda p: read_intents(p, labelled=True),
    "intent.jsonl": lambda p: read_intents(p),
    "intent.json": lambda p: read_intents(p, labelled=False),
    "dialogues.jsonl": lambda p: read_all_dialogues(p, "jsonl", True),
    "dialogues.json": lambda p: read_all_dialogues(p, "jsonl", False),
    "dialogues_001.json": lambda p: (outcome(lambda q: list(import_sgd(q)), p), read_all_dialogues(p, "sgd", True)),
    "crosswoz.json": lambda p: read_all_dialogues(p, "crosswoz", True),
    "crosswoz.json.zip": lambda p: (outcome(lambda q: list(import_crosswoz(q)), p),
                                    read_all_dialogues(p, "crosswoz", False)),
    "data_full.json": lambda p: outcome(import_clinc150, p),
    "rules.yaml": load_rules,
    "rules.json": load_rules,
}


@pytest.mark.parametrize("name", READERS)
@fuzz(40)
@given(raw=random_bytes)
def test_random_bytes(name, raw):
    with tempfile.TemporaryDirectory() as folder:
        READERS[name](write(folder, name, raw))


@pytest.mark.parametrize("name", ["intent.csv", "dialogues.jsonl", "dialogues_001.json", "crosswoz.json",
                                  "data_full.json", "rules.yaml"])
def test_missing_file_and_folder(name):
    with tempfile.TemporaryDirectory() as folder:
        READERS[name](Path(folder) / "absent" / name)
        (Path(folder) / name).mkdir()  # the importers take a folder of dataset files: here an empty one
        READERS[name](Path(folder) / name)


# ---------------------------------------------------------------------------------------------------- found so far

def zip_cut_at_start() -> bytes:
    return zipped(b'{"1": {"messages": []}}')[1:]  # zipfile seeks before the start: OSError, not BadZipFile


SGD_TURN = b'[{"dialogue_id": "x", "services": [], "turns": [{"speaker": "USER", "utterance": %s}]}]'
FOUND = [  # (file name, content, start of the message after "<path>", or None when the file now reads)
    ("intent.csv", b"\xef\xbb\xbf", ": file is empty"),  # was RuntimeError (StopIteration in a generator)
    ("intent.csv", b"\xef\xbb\xbftext,label\n\nab\xffc,x\n", ":3: not valid UTF-8 (byte 0xff)"),  # was :2, 0x0a
    ("intent.jsonl", '{"text": "a\u2028b", "label": "x"}\n'.encode(), None),  # was "not valid JSON"
    ("intent.jsonl", b'{"text": "a", "label": "x"}\n' + b"[" * 3000, ":2: not valid JSON (nested too deeply)"),
    ("intent.json", b"[" * 3000, ":1: not valid JSON (nested too deeply)"),  # was RecursionError
    ("intent.jsonl", json.dumps({"text": "a", "label": "x", "history": "[" * 3000}).encode(),
     ":1: history: history is not a valid JSON list"),
    ("intent.csv", b'"te\nxt",label\nhello,x,y\n', ":3: expected 2 fields ('te\\nxt',label) but found 3"),
    ("intent.jsonl", b'{"te\\nxt": "a"}\n', ":1: no 'text' column (found: 'te\\nxt')"),  # were two lines
    ("dialogues_001.json", SGD_TURN % b"5", ": dialogue 0: a field has the wrong type"),  # was AttributeError
    ("dialogues_001.json", SGD_TURN % b'"a", "frames": [5]', ": dialogue 0: a field has the wrong type"),
    ("crosswoz.json", b'{"1": {"messages": [{"content": 5, "role": "usr"}]}}', ": dialogue 1: a field has the wrong"),
    ("crosswoz.json", b'{"a\\nb": {"messages": 5}}', ": dialogue 'a\\nb': a field has the wrong type"),
    ("crosswoz.json", '\ufeff{"1": {"messages": [{"content": "hi", "role": "sys"}]}}'.encode(), None),  # BOM
    ("crosswoz.json.zip", zip_cut_at_start(), ": not a valid zip file"),
    ("data_full.json", b'{"train": 5, "val": [], "test": []}', ": train: a JSON int where a list"),  # TypeError
    ("data_full.json", b'{"train": [], "val": [], "test": [], "oos_train": null}', ": oos_train: a JSON NoneType"),
    ("rules.yaml", b"blocked_phrases: [\xff]", ":1: not valid UTF-8 (byte 0xff)"),  # was UnicodeDecodeError
    ("rules.yaml", b"# no rules yet\n", None),  # was "not valid YAML"
    ("rules.json", '\ufeff{"blocked_phrases": ["x"]}'.encode(), None),  # was "not valid JSON"
    ("rules.yaml", b"1: a\nfoo: b\n", ": 1: unknown key(s) 1, foo"),  # was TypeError (sorting int and str)
    ("rules.yaml", b'"a\\nb": 1\n', ": 'a\\nb': unknown key(s) 'a\\nb'"),  # was two lines
    ("rules.yaml", b"required: 5\n", ":1: required: must be a list of rules"),  # was TypeError
    ("rules.yaml", b"forbidden_patterns: 5\n", ":1: forbidden_patterns: must be a list of rules"),
    ("rules.yaml", b"required:\n  - {name: a, pattern: b, when_intent: 5}\n",
     ":2: required.0.when_intent: must be an intent name or a list"),  # was TypeError
    ("rules.yaml", b"forbidden_patterns:\n  - {name: a, pattern: 'a{4294967296}'}\n",
     ":2: forbidden_patterns.0.pattern: invalid regular expression"),  # was OverflowError
    ("rules.yaml", b"forbidden_patterns:\n  - {name: a, pattern: '" + b"(" * 3000 + b")" * 3000 + b"'}\n",
     ":2: forbidden_patterns.0.pattern: invalid regular expression"),  # was RecursionError
    ("rules.yaml", b"[" * 3000, ": not valid YAML (nested too deeply)"),  # was RecursionError
]


STRICT = {"intent": read_intent_records, "dialogues_001": lambda p: read_dialogues(p, file_format="sgd"),
          "crosswoz": lambda p: read_dialogues(p, False, "crosswoz"), "data_full": import_clinc150,
          "rules": BusinessRules.load}


@pytest.mark.parametrize("name, raw, expected", FOUND)
def test_inputs_found_by_fuzzing(name, raw, expected):
    with tempfile.TemporaryDirectory() as folder:
        path = write(folder, name, raw)
        READERS[name](path)  # records, or a documented one-line error naming the file
        try:
            STRICT[name.split(".")[0]](path)
            message = None
        except CSLightningError as err:
            message = str(err)
    if expected is None:
        assert message is None
    else:
        assert message is not None and message.startswith(str(path) + expected), message
