"""``cs-data``: data tools. ``cs-data import --format sgd|crosswoz SRC OUT.jsonl`` converts public dialogue datasets
into cs-lightning's dialogue JSON Lines."""

from __future__ import annotations

import argparse
import json
import sys

from cs_lightning.errors import CSLightningError
from cs_lightning.importers import FORMATS, IMPORTERS
from cs_lightning.io import atomic_path


def run_import(fmt: str, src: str, out: str) -> int:
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="cs-data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="convert a public dialogue dataset into dialogue JSON Lines")
    imp.add_argument("--format", required=True, choices=FORMATS)
    imp.add_argument("src", help="dataset file, zip or folder")
    imp.add_argument("out", help="output .jsonl")
    args = parser.parse_args(argv)
    try:
        code = run_import(args.format, args.src, args.out)
    except CSLightningError as err:
        print(f"cs-data: error: {err}", file=sys.stderr)
        code = 2
    raise SystemExit(code)


if __name__ == "__main__":
    main()
