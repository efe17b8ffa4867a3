"""Training-step time with the bottom 10 of 12 BERT-base blocks (and the embeddings) frozen, against none frozen.

Random init at BERT-base size (no download); batches of real-looking short messages. Each setting runs in turn,
alternated over several rounds, and the median step time is reported, so the ratio holds on a noisy machine.

    python tools/freeze_benchmark.py [--steps 8 --rounds 3 --batch 32 --length 32 --device cpu]

Prints one JSON object: step times, their ratio, and the trainable parameter counts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cs_lightning.callbacks.freezing import FreezeLayers  # noqa: E402
from cs_lightning.models.base import BackboneModule, parameter_groups  # noqa: E402
from cs_lightning.registry import get_backbone  # noqa: E402
from cs_lightning.tokenization import train_tokenizer  # noqa: E402


class _Holder(BackboneModule):
    task = "intent"


def build(device: str):
    backbone = get_backbone("bert")
    texts = ["where is my parcel", "refund please", "card stolen", "reset password", "change address"] * 20
    tokenizer = backbone.load_tokenizer(str(train_tokenizer(texts, "wordpiece", 2000)))
    holder = _Holder()
    holder.backbone = backbone
    holder.model = backbone.load_model("intent", None, False, tokenizer, labels=[str(i) for i in range(77)],
                                       size="base", config_overrides={"vocab_size": 30522}).to(device)  # BERT-base
    return holder


def step_times(holder, frozen: bool, steps: int, batch: int, length: int, device: str) -> tuple[list[float], int]:
    for p in holder.model.parameters():
        p.requires_grad_(True)
    holder.model.train()
    if frozen:
        FreezeLayers(num_frozen_blocks=10).freeze_before_training(holder)
    opt = torch.optim.AdamW([g for g in parameter_groups(holder.model.named_parameters(), 0.01) if g["params"]],
                            lr=1e-4)
    ids = torch.randint(5, holder.model.config.vocab_size, (batch, length), device=device)
    labels = torch.randint(0, 77, (batch,), device=device)
    times = []
    for i in range(steps + 2):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(holder.model(input_ids=ids).logits, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= 2:  # warm-up steps excluded
            times.append(time.perf_counter() - start)
    trainable = sum(p.numel() for p in holder.model.parameters() if p.requires_grad)
    return times, trainable


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=32)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    holder = build(args.device)
    total = sum(p.numel() for p in holder.model.parameters())
    runs = {"none": [], "bottom10": []}
    trainable = {}
    for _ in range(args.rounds):
        for name in ("none", "bottom10"):
            times, trainable[name] = step_times(holder, name == "bottom10", args.steps, args.batch, args.length,
                                                args.device)
            runs[name] += times
    none, frozen = statistics.median(runs["none"]), statistics.median(runs["bottom10"])
    result = {"device": args.device, "batch": args.batch, "length": args.length, "total_params": total,
              "trainable_none": trainable["none"], "trainable_bottom10": trainable["bottom10"],
              "step_s_none": round(none, 4), "step_s_bottom10": round(frozen, 4),
              "speedup": round(none / frozen, 2), "steps_measured": len(runs["none"])}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
