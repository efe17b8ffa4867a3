"""Accuracy of an exported model through a plain ``transformers.pipeline("text-classification")`` on a labelled file,
to check that an export predicts what ``cs-train test`` measured.

    cs-export logs/bert_intent_banking77/checkpoints/last.ckpt exported/banking77
    python tools/pipeline_accuracy.py exported/banking77 ../shared/data/banking77/test.csv

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cs_lightning.data.schema import read_intent_records  # noqa: E402


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir")
    parser.add_argument("data_file")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    from transformers import pipeline

    records = read_intent_records(args.data_file)
    classifier = pipeline("text-classification", model=args.model_dir, device="cpu")
    start = time.time()
    predictions = classifier([r.text for r in records], batch_size=args.batch_size, truncation=True)
    correct = sum(p["label"] == r.label for p, r in zip(predictions, records))
    result = {"model_dir": args.model_dir, "examples": len(records), "accuracy": round(correct / len(records), 4),
              "seconds": round(time.time() - start, 1)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
