"""``cs-data``: data tools.

- ``cs-data import --format sgd|crosswoz SRC OUT.jsonl`` converts public dialogue datasets into cs-lightning's
  dialogue JSON Lines; ``--format clinc150 data_full.json OUT_DIR`` writes CLINC150's intent splits (out-of-scope
  examples labelled ``oos``) as ``OUT_DIR/{train,val,test}.jsonl``.
- ``cs-data validate FILE [FILE ...] [--task intent|dialogue]`` checks files before training: every schema error
  (the readers' messages, with file and line), the label distribution, duplicate texts, and texts shared between
  the files given (train/test leakage). Exits 1 when there are errors. ``--task dialogue`` reads our dialogue records
  and ``{"messages": [...]}`` records alike (roles alternate from the user, no empty content, an assistant message).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cs_lightning.commands import run_command
from cs_lightning.errors import CSLightningError
from cs_lightning.importers import FORMATS, IMPORTERS, INTENT_IMPORTERS
from cs_lightning.io import atomic_path


def run_import(fmt: str, src: str, out: str) -> int:
    if fmt in INTENT_IMPORTERS:  # OUT is a folder of train/val/test files
        for split, rows in INTENT_IMPORTERS[fmt](src).items():
            with atomic_path(Path(out) / f"{split}.jsonl") as tmp, open(tmp, "w", encoding="utf-8") as f:
                f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
            print(f"cs-data: wrote {len(rows)} records to {Path(out) / f'{split}.jsonl'}")
        return 0
    count = turns = 0
    with atomic_path(out) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for dialogue in IMPORTERS[fmt](src):
            if not any(t["role"] == "agent" for t in dialogue["turns"]):
                continue  # nothing to learn from
            f.write(json.dumps(dialogue, ensure_ascii=False) + "\n")
            count += 1
            turns += len(dialogue["turns"])
    print(f"cs-data: wrote {count} dialogues ({turns} turns) to {out}")
    return 0


def _normal(text: str) -> str:
    return " ".join(text.lower().split())


def run_validate(files: list[str], task: str, text_column: str | None, label_column: str | None) -> int:
    from collections import Counter

    from cs_lightning.data.dialogue import read_dialogues
    from cs_lightning.data.schema import ColumnMap, read_intent_records

    errors: list = []
    texts: dict[str, dict[str, int]] = {}
    for path in files:
        found: list = []
        try:
            if task == "intent":
                records = read_intent_records(path, ColumnMap(text_column, label_column), errors=found)
                labels = Counter(r.label for r in records if r.label is not None)
                items = [(r.text, r.line) for r in records]
            else:
                # our dialogue records may end on a user turn (prediction input); a messages record needs an
                # assistant message, since chat tools export them for training
                dialogues = read_dialogues(path, require_agent=False, errors=found, require_assistant_message=True)
                labels = Counter(d.domain or "(none)" for d in dialogues)
                items = [(" | ".join(t.text for t in d.turns), d.line) for d in dialogues]
        except CSLightningError as err:  # the file cannot be read at all (not found, not UTF-8, ...)
            found.append(err)
            records, labels, items = [], Counter(), []
        errors += found
        print(f"{path}: {len(items)} {'records' if task == 'intent' else 'dialogues'}, {len(found)} error(s)")
        for err in found:
            print(f"  error: {err}")
        if labels:
            kind = "labels" if task == "intent" else "domains"
            shown = ", ".join(f"{name} {count}" for name, count in labels.most_common())
            print(f"  {kind} ({len(labels)}): {shown}")
            if task == "intent" and len(labels) > 1:
                most, least = labels.most_common()[0][1], labels.most_common()[-1][1]
                if most >= 10 * least:
                    print(f"  warning: imbalanced labels ({most} vs {least}); consider model.class_weights")
        seen: dict[str, int] = {}
        duplicates = 0
        for text, line in items:
            key = _normal(text)
            if key in seen:
                duplicates += 1
                if duplicates <= 5:
                    print(f"  duplicate: line {line} repeats line {seen[key]}: {text[:60]!r}")
            else:
                seen[key] = line
        if duplicates:
            print(f"  {duplicates} duplicate text(s)")
        texts[path] = seen
    names = list(texts)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            shared = set(texts[first]) & set(texts[second])
            if shared:
                example = next(iter(shared))
                print(f"leakage: {len(shared)} text(s) in both {first} and {second}, e.g. {example[:60]!r} "
                      f"(lines {texts[first][example]} and {texts[second][example]})")
    return 1 if errors else 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="cs-data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="convert a public dialogue dataset into dialogue JSON Lines")
    imp.add_argument("--format", required=True, choices=FORMATS)
    imp.add_argument("src", help="dataset file, zip or folder")
    imp.add_argument("out", help="output .jsonl (clinc150: a folder for train/val/test.jsonl)")
    val = sub.add_parser("validate", help="check data files: schema errors, labels, duplicates, leakage")
    val.add_argument("files", nargs="+", help="one or more files (e.g. train and test, to check for leakage)")
    val.add_argument("--task", choices=["intent", "dialogue"], default="intent")
    val.add_argument("--text-column", default=None)
    val.add_argument("--label-column", default=None)
    args = parser.parse_args(argv)
    if args.command == "validate":
        run_command("cs-data", lambda: run_validate(args.files, args.task, args.text_column, args.label_column))
    else:
        run_command("cs-data", lambda: run_import(args.format, args.src, args.out))


if __name__ == "__main__":
    main()
