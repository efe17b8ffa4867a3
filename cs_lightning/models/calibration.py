"""Calibrated confidences: one temperature ``T`` fitted on validation logits (``softmax(logits / T)``), and the
expected calibration error (ECE) and reliability bins that measure it.

Temperature scaling (Guo et al., 2017) never changes a prediction (the arg-max of ``logits / T`` is the arg-max of
the logits); it only makes a confidence of 0.8 mean "right 80% of the time", which the out-of-scope threshold and
anything that shows confidences to people rely on.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

BINS = 15  # equal-width confidence bins of the ECE and the reliability diagram
MIN_EXAMPLES = 20  # fewer validation examples (with a class) than this: no temperature is fitted (T stays 1.0)
T_RANGE = (0.05, 20.0)


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, steps: int = 60) -> float:
    """The temperature that minimises the negative log-likelihood of ``labels`` under ``softmax(logits / T)``.

    The NLL is convex in ``1 / T``, so a golden-section search over ``log T`` in :data:`T_RANGE` finds its minimum
    (deterministic, no learning rate; ``steps`` iterations narrow the interval by 0.618 each). A validation set the
    model gets entirely right has its minimum at the smallest ``T``: the range keeps it finite.
    """
    logits, labels = logits.double(), labels.long()  # float64: the same T whatever order the ranks gathered in

    def nll(log_t: float) -> float:
        return float(F.cross_entropy(logits / math.exp(log_t), labels))

    lo, hi = math.log(T_RANGE[0]), math.log(T_RANGE[1])
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(a), nll(b)
    for _ in range(steps):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(b)
    best = (lo + hi) / 2
    return float(math.exp(best)) if nll(best) <= nll(0.0) else 1.0  # never worse than leaving the logits alone


def reliability_bins(confidence: torch.Tensor, correct: torch.Tensor, bins: int = BINS) -> dict:
    """Per equal-width confidence bin (``(i/bins, (i+1)/bins]``, 0 in the first): the examples, their mean
    confidence and their accuracy (0 where a bin is empty), as plain lists."""
    confidence, correct = confidence.detach().float().cpu(), correct.detach().float().cpu()
    index = (confidence * bins).ceil().long().clamp(1, bins) - 1
    count = torch.bincount(index, minlength=bins).float()
    conf_sum = torch.bincount(index, weights=confidence, minlength=bins)
    hit_sum = torch.bincount(index, weights=correct, minlength=bins)
    safe = count.clamp(min=1)
    return {"count": count.long().tolist(), "confidence": (conf_sum / safe).tolist(),
            "accuracy": (hit_sum / safe).tolist()}


def expected_calibration_error(confidence: torch.Tensor, correct: torch.Tensor, bins: int = BINS) -> float:
    """ECE: the examples' share in each equal-width confidence bin times the gap between the bin's accuracy and its
    mean confidence, summed over the bins (0: perfectly calibrated)."""
    table = reliability_bins(confidence, correct, bins)
    total = max(1, sum(table["count"]))
    return float(sum(n / total * abs(acc - conf)
                     for n, acc, conf in zip(table["count"], table["accuracy"], table["confidence"])))


def calibration_figures(logits: torch.Tensor, labels: torch.Tensor, temperature: float, bins: int = BINS) -> dict:
    """ECE before (``T = 1``) and after (``temperature``) on examples with a class, with their reliability bins."""
    logits = logits.float()
    correct = logits.argmax(-1) == labels
    out = {"temperature": float(temperature), "examples": int(len(labels)), "bins": bins}
    for name, t in (("before", 1.0), ("after", float(temperature))):
        confidence = (logits / t).softmax(-1).max(-1).values
        out[f"ece_{name}"] = expected_calibration_error(confidence, correct, bins)
        out.setdefault("reliability", {})[name] = reliability_bins(confidence, correct, bins)
    return out
