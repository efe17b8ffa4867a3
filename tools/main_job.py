"""README's main job as a user runs it, measured: wall time from before the first import to the end, bytes the
process wrote (``/proc/self/io``), and the best checkpoint it kept. One JSON line.

Runs in a new empty folder (logs go there), with whatever cs-lightning the Python running it imports, so two
checkouts compare side by side, alternated:

    for i in 1 2 3; do
      /path/to/old/.venv/bin/python tools/main_job.py --config /path/to/old/configs/bert_intent.yaml
      .venv/bin/python tools/main_job.py --config configs/bert_intent.yaml
    done

(Commits before the commands/ package, such as adf886a, have ``cs_lightning.cli`` instead: the tool takes either.)
"""

import time

START = time.time()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/bert_intent.yaml")
    args, extra = parser.parse_known_args()
    config = str(Path(args.config).resolve())
    os.chdir(tempfile.mkdtemp(prefix="main_job_"))
    try:
        from cs_lightning.commands.train import main as cs_train
    except ImportError:  # older checkouts
        from cs_lightning.cli import main as cs_train
    try:
        cs_train(["fit", "--config", config, "--trainer.enable_progress_bar=false", *extra])
    except SystemExit as stop:
        if stop.code not in (0, None):
            raise
    wall = time.time() - START
    io = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    best = sorted(p.name for p in Path("logs").rglob("best*.ckpt"))
    print(json.dumps({"config": config, "folder": os.getcwd(), "wall_s": round(wall, 1),
                      "written_mb": round(int(io["write_bytes"]) / 1e6, 1), "best": best}), flush=True)


if __name__ == "__main__":
    main()
