"""Accuracy of an exported model through a plain ``transformers.pipeline("text-classification")`` on a labelled file,
to check that an export predicts what ``cs-train test`` measured.

    cs-export logs/bert_intent_banking77/checkpoints/last.ckpt exported/banking77
    python tools/pipeline_accuracy.py exported/banking77 ../shared/data/banking77/test.csv
    python tools/pipeline_accuracy.py exported/banking77 ../shared/data/banking77/test.csv --onnx   # after --onnx

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
    parser.add_argument("--onnx", action="store_true",
                        help="score the export's ONNX file (cs-export --onnx) with onnxruntime instead of the pipeline")
    args = parser.parse_args(argv)
    records = read_intent_records(args.data_file)
    if args.onnx:
        return onnx_accuracy(args, records)
    from transformers import pipeline

    classifier = pipeline("text-classification", model=args.model_dir, device="cpu")
    start = time.time()
    predictions = classifier([r.text for r in records], batch_size=args.batch_size, truncation=True)
    correct = sum(p["label"] == r.label for p, r in zip(predictions, records))
    result = {"model_dir": args.model_dir, "examples": len(records), "accuracy": round(correct / len(records), 4),
              "seconds": round(time.time() - start, 1)}
    print(json.dumps(result))
    return result


def onnx_accuracy(args, records) -> dict:
    """The same figure from the ONNX file named in the export's metadata (labels, inputs, max_length from there)."""
    import onnxruntime
    from transformers import AutoTokenizer

    from cs_lightning.export import read_export

    info = read_export(args.model_dir)
    onnx = info["onnx"]
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    session = onnxruntime.InferenceSession(str(Path(args.model_dir) / onnx["file"]), providers=["CPUExecutionProvider"])
    start, correct = time.time(), 0
    for i in range(0, len(records), args.batch_size):
        chunk = records[i: i + args.batch_size]
        enc = tokenizer([r.text for r in chunk], padding=True, truncation=True, max_length=info["max_length"],
                        return_tensors="np")
        logits = session.run(["logits"], {k: enc[k].astype("int64") for k in onnx["inputs"]})[0]
        correct += sum(info["labels"][p] == r.label for p, r in zip(logits.argmax(-1).tolist(), chunk))
    result = {"model_dir": args.model_dir, "onnx": onnx["file"], "examples": len(records),
              "accuracy": round(correct / len(records), 4), "seconds": round(time.time() - start, 1)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
