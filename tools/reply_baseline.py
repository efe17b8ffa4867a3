"""Nearest-neighbour retrieval baseline for reply generation: answer with the reply of the most similar training
context (TF-IDF cosine over the last turns), scored by the same metrics code as the models (BLEU, ROUGE-L, chrF,
rule violations).

    python tools/reply_baseline.py --train ../shared/data/sgd_subset/train --eval ../shared/data/sgd_subset/dev \
        --format sgd --language en

Prints one JSON object with the scores.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cs_lightning.data.dialogue import read_dialogues, reply_examples  # noqa: E402
from cs_lightning.models.reply import GenerationMetrics  # noqa: E402
from cs_lightning.rules import BusinessRules  # noqa: E402


def terms(text: str, language: str) -> list[str]:
    text = text.lower()
    if language == "zh":  # characters and character bigrams
        chars = [c for c in text if not c.isspace()]
        return chars + [a + b for a, b in zip(chars, chars[1:])]
    return re.findall(r"[a-z0-9]+", text)


def context_text(example, turns: int) -> str:
    return " ".join(t.text for t in example.context[-turns:])


def tfidf(docs: list[list[str]], vocab: dict[str, int], idf: torch.Tensor) -> torch.Tensor:
    rows, cols, vals = [], [], []
    for i, doc in enumerate(docs):
        for term, count in Counter(doc).items():
            j = vocab.get(term)
            if j is not None:
                rows.append(i)
                cols.append(j)
                vals.append((1 + math.log(count)) * float(idf[j]))
    matrix = torch.sparse_coo_tensor([rows, cols], vals, (len(docs), len(vocab))).coalesce().to_dense()
    return torch.nn.functional.normalize(matrix, dim=1)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", required=True)
    parser.add_argument("--eval", required=True)
    parser.add_argument("--format", default="jsonl", choices=["jsonl", "sgd", "crosswoz"])
    parser.add_argument("--language", default="en", choices=["en", "zh"])
    parser.add_argument("--turns", type=int, default=2, help="context turns compared (newest)")
    parser.add_argument("--rules", default=None, help="business rules file for violation counts")
    args = parser.parse_args(argv)
    start = time.time()
    train = reply_examples(read_dialogues(args.train, file_format=args.format))
    evaluation = reply_examples(read_dialogues(args.eval, file_format=args.format))
    train_docs = [terms(context_text(e, args.turns), args.language) for e in train]
    df = Counter(t for doc in train_docs for t in set(doc))
    vocab = {t: i for i, t in enumerate(sorted(df))}
    idf = torch.tensor([math.log((1 + len(train_docs)) / (1 + df[t])) + 1 for t in sorted(df)])
    train_m = tfidf(train_docs, vocab, idf)
    hypotheses = []
    for chunk in range(0, len(evaluation), 256):
        part = evaluation[chunk:chunk + 256]
        query = tfidf([terms(context_text(e, args.turns), args.language) for e in part], vocab, idf)
        best = (query @ train_m.T).argmax(1).tolist()
        hypotheses += [train[i].reply for i in best]
    rules = BusinessRules.load(args.rules) if args.rules else BusinessRules()
    metrics = GenerationMetrics(args.language, rules.rule_names)
    metrics.update_generation(hypotheses, [e.reply for e in evaluation],
                              [rules.violations(h, e.context, e.intent) for h, e in zip(hypotheses, evaluation)])
    scores = {k.split("/", 1)[1]: round(float(v), 2) for k, v in metrics.compute("eval").items()}
    result = {"baseline": "tfidf_nearest_context", "train_examples": len(train), "eval_examples": len(evaluation),
              **scores, "seconds": round(time.time() - start, 1)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
