"""The intent evaluation report written at ``cs-train test``: per-class precision/recall/F1/support as a table on the
console and as JSON in the run folder, the confusion matrix as an image in TensorBoard (above
:data:`CONFUSION_LIMIT` intents the most confused pairs by name and count instead: a 151x151 matrix says nothing at
a glance; the JSON keeps the full matrix), a reliability diagram of the confidences before and after temperature
scaling, and the misclassified examples (text, gold, predicted, confidence) as JSON Lines.

Images are drawn with Pillow (a dependency of TensorBoard), so no plotting library is needed."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback
from rich.console import Console
from rich.table import Table

from cs_lightning.io import atomic_path
from cs_lightning.models.intent import most_confused

CONFUSION_LIMIT = 30  # intents above which the image shows the most confused pairs instead of the matrix


def confusion_image(matrix: list[list[int]], cell: int = 6) -> torch.Tensor:
    """A heat map of the row-normalised confusion matrix as a CHW image (white: 0, dark blue: all of the row)."""
    m = torch.tensor(matrix, dtype=torch.float)
    m = m / m.sum(1, keepdim=True).clamp(min=1)
    m = m.repeat_interleave(cell, 0).repeat_interleave(cell, 1)
    return torch.stack([1 - m, 1 - 0.6 * m, 1 - 0.2 * m])


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow before 10.1: one bitmap size
        return ImageFont.load_default()


def _chw(image) -> torch.Tensor:
    import numpy as np

    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def confused_pairs_image(pairs: list[dict], width: int = 900, row: int = 22) -> torch.Tensor:
    """A horizontal bar chart of confused pairs (``{"gold", "predicted", "count"}``, most first) as a CHW image:
    ``gold -> predicted`` on the left, a bar and the count on the right."""
    from PIL import Image, ImageDraw

    font, title_font = _font(13), _font(15)
    top = 34
    image = Image.new("RGB", (width, top + row * max(1, len(pairs)) + 10), "white")
    draw = ImageDraw.Draw(image)
    draw.text((10, 8), "Most confused pairs (gold -> predicted), test examples", fill="black", font=title_font)
    if not pairs:
        draw.text((10, top), "no confusions", fill="black", font=font)
        return _chw(image)
    names = [f"{p['gold']} -> {p['predicted']}" for p in pairs]
    text_width = min(int(width * 0.6), max(int(draw.textlength(n, font=font)) for n in names) + 20)
    bar_space = width - text_width - 60
    most = max(p["count"] for p in pairs)
    for i, (name, pair) in enumerate(zip(names, pairs)):
        y = top + i * row
        draw.text((10, y + 3), name, fill="black", font=font)
        length = max(2, round(bar_space * pair["count"] / most))
        draw.rectangle((text_width, y + 3, text_width + length, y + row - 4), fill=(51, 102, 204))
        draw.text((text_width + length + 6, y + 3), str(pair["count"]), fill="black", font=font)
    return _chw(image)


def reliability_image(calibration: dict, size: int = 260) -> torch.Tensor:
    """Reliability diagrams before and after temperature scaling, side by side, as a CHW image: per confidence bin
    the accuracy (bars) against the diagonal of perfect calibration, with the ECE in each title."""
    from PIL import Image, ImageDraw

    font = _font(13)
    margin, gap = 40, 30
    panels = [("before", "raw softmax"), ("after", f"T = {calibration['temperature']:.3g}")]
    image = Image.new("RGB", (2 * (size + margin) + gap + 10, size + 2 * margin + 10), "white")
    draw = ImageDraw.Draw(image)
    for k, (name, label) in enumerate(panels):
        bins = calibration["reliability"][name]
        x0, y0 = margin + k * (size + margin + gap), margin
        draw.text((x0, 8), f"{label}: ECE {calibration[f'ece_{name}']:.3f} ({calibration['examples']} examples)",
                  fill="black", font=font)
        n = len(bins["count"])
        width = size / n
        for i, (count, acc) in enumerate(zip(bins["count"], bins["accuracy"])):
            if count:
                draw.rectangle((x0 + i * width + 1, y0 + size * (1 - acc), x0 + (i + 1) * width - 1, y0 + size),
                               fill=(51, 102, 204))
        draw.line((x0, y0 + size, x0 + size, y0), fill=(204, 51, 51), width=2)  # perfect calibration
        draw.rectangle((x0, y0, x0 + size, y0 + size), outline="black")
        draw.text((x0 + size / 2 - 30, y0 + size + 6), "confidence", fill="black", font=font)
        draw.text((x0 - 30, y0 - 2), "1", fill="black", font=font)
        draw.text((x0 - 30, y0 + size - 14), "0", fill="black", font=font)
    return _chw(image)


class IntentReport(Callback):
    """Writes the report of an :class:`~cs_lightning.models.IntentClassifier` when testing ends.

    Args:
        worst: rows of the console table (lowest F1 first); the JSON has every label.
        pairs: confused pairs the image shows above 30 intents (the JSON has the full matrix).
    """

    def __init__(self, worst: int = 20, pairs: int = 25):
        self.worst, self.pairs = worst, pairs

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
            step = trainer.global_step
            if len(report["confusion"]) > CONFUSION_LIMIT:
                pairs = most_confused(report["confusion"], list(report["per_class"]), self.pairs)
                experiment.add_image("test/most_confused", confused_pairs_image(pairs), step)
            else:
                experiment.add_image("test/confusion_matrix", confusion_image(report["confusion"]), step)
            if report.get("calibration", {}).get("examples"):
                experiment.add_image("test/reliability", reliability_image(report["calibration"]), step)
        table = Table(title=f"Test: accuracy {report['accuracy']:.4f}, macro-F1 {report['f1_macro']:.4f} on "
                            f"{report['examples']} examples — {min(self.worst, len(report['per_class']))} lowest F1")
        for column in ("intent", "precision", "recall", "f1", "support"):
            table.add_column(column, justify="left" if column == "intent" else "right")
        rows = sorted(report["per_class"].items(), key=lambda item: (item[1]["f1"], item[0]))
        for name, row in rows[: self.worst]:
            table.add_row(name, f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['f1']:.3f}",
                          str(row["support"]))
        Console().print(table)
        calibration = report.get("calibration") or {}
        if calibration.get("examples"):
            print(f"Calibration (temperature {calibration['temperature']:.3g}): ECE {calibration['ece_before']:.4f} "
                  f"raw, {calibration['ece_after']:.4f} calibrated, on {calibration['examples']} test examples")
        print(f"Report: {folder / 'test_report.json'}; {len(pl_module.misclassified)} misclassified examples in "
              f"{folder / 'misclassified.jsonl'}")
