"""Does evaluation memory stay flat as the evaluated split grows?

Runs ``cs-train validate`` (each in its own process) on growing validation sets cut from Banking77 (every size a
prefix of the shuffled training file) with the same model, and reports the peak resident memory (``ru_maxrss`` of
the child) and the time of each. Metrics are streaming torchmetrics states and generation runs on a bounded sample,
so the peak should grow only by the size of the data itself (a few bytes of token ids per example), not with
per-example logits or predictions.

    python tools/eval_memory.py                       # sizes 500, 2000, 8000 (about 3 minutes on 2 CPU cores)
    python tools/eval_memory.py --sizes 1000,10000 --config configs/bert_intent_banking77.yaml

The last line printed is one JSON object: ``{"sizes": [...], "peak_rss_mb": [...], "seconds": [...],
"growth_mb_per_1k_examples": ...}``.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="500,2000,8000", help="validation set sizes (comma-separated)")
    parser.add_argument("--config", default=str(REPO / "configs" / "bert_intent_banking77.yaml"))
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    source = Path(args.data_dir) / "banking77" / "train.csv"
    if not source.exists():
        print(f"eval_memory: {source} not found (pass --data-dir)", file=sys.stderr)
        return 2
    with open(source, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    random.Random(0).shuffle(body)
    results = {"sizes": [], "peak_rss_mb": [], "seconds": []}
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        train = work / "train.csv"  # the labels and tokenizer come from the training file: keep it the same
        with open(train, "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([header] + body[:2000])
        for size in sizes:
            val = work / f"val_{size}.csv"
            with open(val, "w", newline="", encoding="utf-8") as f:
                csv.writer(f).writerows([header] + body[:size])
            cmd = [sys.executable, "-m", "cs_lightning.commands.train", "validate", "--config", args.config,
                   f"--data.init_args.train_file={train}", f"--data.init_args.val_file={val}",
                   "--data.init_args.test_file=null", "--trainer.enable_progress_bar=false",
                   f"--trainer.logger.init_args.save_dir={work / 'logs'}"]
            before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            start = time.time()
            done = subprocess.run(cmd, capture_output=True, text=True, cwd=work)
            if done.returncode != 0:
                print(done.stderr[-3000:], file=sys.stderr)
                return 1
            peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            if peak <= before and results["peak_rss_mb"]:
                peak = before  # ru_maxrss of children is a running maximum: sizes grow, so this is rare
            results["sizes"].append(size)
            results["peak_rss_mb"].append(round(peak / 1024, 1))
            results["seconds"].append(round(time.time() - start, 1))
            print(f"{size:>6} examples: peak RSS {peak / 1024:7.1f} MB, {time.time() - start:5.1f} s", flush=True)
    span = (results["sizes"][-1] - results["sizes"][0]) / 1000
    results["growth_mb_per_1k_examples"] = round(
        (results["peak_rss_mb"][-1] - results["peak_rss_mb"][0]) / span, 2) if span else None
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
