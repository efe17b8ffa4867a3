"""What the blocked-phrase constraint costs at generation time.

Generates 48 new tokens (no early stop) for a batch of 16 random prompts with a small random GPT-2 and a byte-level
BPE tokenizer trained on the bundled e-commerce dialogues, with and without the bundled e-commerce rules'
constraint, greedy and 4-beam search; alternated, repeated, medians. Prints one JSON line.

    python tools/constraint_overhead.py [--repeats 5] [--layers 2] [--width 64]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LogitsProcessorList, PreTrainedTokenizerFast

from cs_lightning.constraints import blocked_phrases_processor
from cs_lightning.data.dialogue import read_dialogues
from cs_lightning.rules import BusinessRules
from cs_lightning.tokenization import train_tokenizer

DEMO = Path(__file__).resolve().parents[1] / "cs_lightning" / "data" / "demo" / "ecommerce"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--width", type=int, default=64)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    texts = [t.text for f in sorted((DEMO / "dialogues").rglob("train.jsonl")) for d in read_dialogues(f)
             for t in d.turns]
    tok = PreTrainedTokenizerFast.from_pretrained(
        str(train_tokenizer(texts, "bpe", vocab_size=4000, cache_dir=Path(tempfile.mkdtemp()))))
    rules = BusinessRules.load(DEMO / "rules.yaml")
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=args.width, n_layer=args.layers, n_head=2,
                                       n_positions=128, bos_token_id=tok.bos_token_id,
                                       eos_token_id=tok.eos_token_id)).eval()
    prompt = torch.randint(0, len(tok), (16, 20))
    times: dict[str, list[float]] = {}
    for _ in range(args.repeats + 1):  # the first round warms up and is dropped
        for beams in (1, 4):
            for constrained in (False, True):
                processors = LogitsProcessorList([blocked_phrases_processor(
                    rules.blocked, tok, prompt.shape[1], 48, tok.eos_token_id, num_beams=beams)] if constrained else [])
                start = time.perf_counter()
                with torch.no_grad():
                    model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=48,
                                   min_new_tokens=48, num_beams=beams, do_sample=False, logits_processor=processors,
                                   pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
                times.setdefault(f"beams{beams}_{'rules' if constrained else 'plain'}", []).append(
                    time.perf_counter() - start)
    medians = {k: round(statistics.median(v[1:]), 4) for k, v in times.items()}
    print(json.dumps({"vocab": len(tok), "phrases": len(rules.blocked.phrases), "median_s": medians,
                      "greedy_ratio": round(medians["beams1_rules"] / medians["beams1_plain"], 2),
                      "beam4_ratio": round(medians["beams4_rules"] / medians["beams4_plain"], 2)}))


if __name__ == "__main__":
    main()
