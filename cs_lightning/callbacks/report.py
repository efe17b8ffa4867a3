"""The intent evaluation report written at ``cs-train test``: per-class precision/recall/F1/support as a table on the
console and as JSON in the run folder, the confusion matrix as an image in TensorBoard, and the misclassified
examples (text, gold, predicted, confidence) as JSON Lines."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback
from rich.console import Console
from rich.table import Table

from cs_lightning.io import atomic_path


def confusion_image(matrix: list[list[int]], cell: int = 6) -> torch.Tensor:
    """A heat map of the row-normalised confusion matrix as a CHW image (white: 0, dark blue: all of the row)."""
    m = torch.tensor(matrix, dtype=torch.float)
    m = m / m.sum(1, keepdim=True).clamp(min=1)
    m = m.repeat_interleave(cell, 0).repeat_interleave(cell, 1)
    return torch.stack([1 - m, 1 - 0.6 * m, 1 - 0.2 * m])


class IntentReport(Callback):
    """Writes the report of an :class:`~cs_lightning.models.IntentClassifier` when testing ends.

    Args:
        worst: rows of the console table (lowest F1 first); the JSON has every label.
    """

    def __init__(self, worst: int = 20):
        self.worst = worst

    def on_test_end(self, trainer, pl_module) -> None:
        folder = Path(trainer.log_dir or ".")  # every rank asks: log_dir is a broadcast under DDP
        report = getattr(pl_module, "test_report", None)
        if report is None or not trainer.is_global_zero:
            return
        with atomic_path(folder / "test_report.json") as tmp:
            tmp.write_text(json.dumps(report, indent=1, ensure_ascii=False), encoding="utf-8")
        records = getattr(trainer.datamodule, "records", {}).get("test", [])
        texts = {r.id: getattr(r, "text", None) for r in records}
        with atomic_path(folder / "misclassified.jsonl") as tmp, open(tmp, "w", encoding="utf-8") as f:
            for row in pl_module.misclassified:
                f.write(json.dumps({"id": row["id"], "text": texts.get(row["id"]), **{k: v for k, v in row.items()
                                                                                     if k != "id"}},
                                   ensure_ascii=False) + "\n")
        experiment = getattr(trainer.logger, "experiment", None)
        if hasattr(experiment, "add_image"):
            experiment.add_image("test/confusion_matrix", confusion_image(report["confusion"]), trainer.global_step)
        table = Table(title=f"Test: accuracy {report['accuracy']:.4f}, macro-F1 {report['f1_macro']:.4f} on "
                            f"{report['examples']} examples — {min(self.worst, len(report['per_class']))} lowest F1")
        for column in ("intent", "precision", "recall", "f1", "support"):
            table.add_column(column, justify="left" if column == "intent" else "right")
        rows = sorted(report["per_class"].items(), key=lambda item: (item[1]["f1"], item[0]))
        for name, row in rows[: self.worst]:
            table.add_row(name, f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['f1']:.3f}",
                          str(row["support"]))
        Console().print(table)
        print(f"Report: {folder / 'test_report.json'}; {len(pl_module.misclassified)} misclassified examples in "
              f"{folder / 'misclassified.jsonl'}")
