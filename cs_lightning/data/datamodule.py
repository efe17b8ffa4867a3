"""The intent-recognition DataModule: read and validate the files, settle the label set and the tokenizer, tokenize
each split once (cached), and serve length-grouped, dynamically padded batches."""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from cs_lightning.data.batching import LengthGroupedBatchSampler, PadCollator, TokenizedDataset
from cs_lightning.data.encoding import cached_encode
from cs_lightning.data.schema import ColumnMap, IntentRecord, check_known_labels, read_intent_records
from cs_lightning.errors import ConfigError, DataError
from cs_lightning.pretrained import resolve_model
from cs_lightning.registry import get_backbone
from cs_lightning.tokenization import train_tokenizer

LANGUAGES = ("en", "zh")


def stratified_split(records: Sequence[IntentRecord], fraction: float, seed: int):
    """Split off about ``fraction`` of each label (at least one, never a label's only example), reproducibly."""
    by_label: dict[str, list[IntentRecord]] = defaultdict(list)
    for rec in records:
        by_label[rec.label].append(rec)
    rng = random.Random(seed)
    keep, carved = [], []
    for label in sorted(by_label):
        group = list(by_label[label])
        rng.shuffle(group)
        n = 0 if len(group) < 2 else min(len(group) - 1, max(1, round(len(group) * fraction)))
        carved += group[:n]
        keep += group[n:]
    return keep, carved


class IntentDataModule(pl.LightningDataModule):
    """Intent data from the user's files (CSV, TSV, JSON Lines, JSON arrays).

    The files are read and validated when the module is built, before any training, so a bad line stops the run at
    once with ``file:line: problem (fix)``; the label set (sorted names from the training file) and the tokenizer are
    then known and handed to the model by the CLI.

    Args:
        train_file: labelled training data.
        val_file: labelled validation data; when missing, ``val_fraction`` of train is carved out, stratified.
        test_file: labelled test data.
        predict_file: messages to label (labels, if any, are ignored).
        batch_size: samples per training batch (per device).
        eval_batch_size: samples per evaluation batch; default ``2 * batch_size``.
        language: ``en`` or ``zh``; chooses bundled demo data and tokenizer settings.
        max_length: tokens per input, message plus history; longer inputs lose their oldest history first.
        max_history_turns: earlier turns kept from a record's ``history``.
        val_fraction: share of each label carved from train for validation when ``val_file`` is not given.
        seed: seed of the validation carve and of the batch order.
        text_column: column or key of the message (default: text, query, utterance, sentence, message or content).
        label_column: column or key of the label (default: label, category, intent or class).
        history_column: column or key of the earlier turns (default: history or context).
        id_column: column or key of a record id (default: id, guid or uid; else ``file:line``).
        group_by_length: batch samples of similar length together (much less padding on short messages).
        pad_to_multiple_of: round padded lengths up to a multiple of this (8 suits GPU tensor cores).
        num_workers: data-loading worker processes.
        backbone: backbone plugin name; linked from ``model.backbone`` by the CLI.
        tokenizer: tokenizer source (hub id or folder); linked from ``model.model_name_or_path``. When None, a
            tokenizer is trained on the training texts and cached.
        tokenizer_vocab_size: vocabulary size of a trained tokenizer.
        lowercase: fold case in a trained tokenizer.
    """

    domain: str | None = None

    def __init__(self, train_file: str | None = None, val_file: str | None = None, test_file: str | None = None,
                 predict_file: str | None = None, batch_size: int = 32, eval_batch_size: int | None = None,
                 language: str = "en", max_length: int = 128, max_history_turns: int = 4, val_fraction: float = 0.1,
                 seed: int = 42, text_column: str | None = None, label_column: str | None = None,
                 history_column: str | None = None, id_column: str | None = None, group_by_length: bool = True,
                 pad_to_multiple_of: int | None = None, num_workers: int = 0, backbone: str = "bert",
                 tokenizer: str | None = None, tokenizer_vocab_size: int = 8000, lowercase: bool = True):
        super().__init__()
        if language not in LANGUAGES:
            raise ConfigError("data.language", f"unknown language {language!r}", f"use one of {', '.join(LANGUAGES)}")
        if batch_size < 1:
            raise ConfigError("data.batch_size", f"must be at least 1, got {batch_size}")
        if not 0 <= val_fraction < 1:
            raise ConfigError("data.val_fraction", f"must be in [0, 1), got {val_fraction}")
        self.save_hyperparameters()
        self.columns = ColumnMap(text_column, label_column, history_column, id_column)
        self.files = {"train": train_file, "val": val_file, "test": test_file, "predict": predict_file}
        self.records: dict[str, list[IntentRecord]] = {}
        self.datasets: dict[str, TokenizedDataset] = {}
        self.backbone = get_backbone(backbone)
        self._read_files()
        self.tokenizer_path = self._resolve_tokenizer(tokenizer)
        self.tokenizer = self.backbone.load_tokenizer(self.tokenizer_path)

    # ------------------------------------------------------------------ reading
    def _read_files(self) -> None:
        files = self.files
        if files["train"]:
            train = read_intent_records(files["train"], self.columns, labelled=True)
            self.label_names = sorted({r.label for r in train})
            if len(self.label_names) < 2:
                raise DataError(files["train"], f"only one label ({self.label_names[0]!r}) in the training data",
                                field="label", fix="an intent classifier needs at least two intents")
            if files["val"] is None and self.hparams.val_fraction > 0:
                train, carved = stratified_split(train, self.hparams.val_fraction, self.hparams.seed)
                self.records["val"] = carved
            self.records["train"] = train
        else:
            self.label_names = None
        for split in ("val", "test"):
            if files[split]:
                records = read_intent_records(files[split], self.columns, labelled=True)
                if self.label_names is not None:
                    check_known_labels(records, self.label_names, files[split])
                self.records[split] = records
        if files["predict"]:
            self.records["predict"] = read_intent_records(files["predict"], self.columns, labelled=False)
        if not self.records:
            raise ConfigError("data.train_file", "no data files given",
                              "set data.train_file (and optionally val_file, test_file, predict_file)")

    def _resolve_tokenizer(self, tokenizer: str | None) -> str:
        if tokenizer is not None:
            return resolve_model(tokenizer, key="model.model_name_or_path").path
        if "train" not in self.records:
            raise ConfigError("model.model_name_or_path", "no tokenizer: no model source and no training file to "
                              "train one on", "set model.model_name_or_path, or data.train_file")
        texts = [r.text for r in self.records["train"]] + [t.text for r in self.records["train"] for t in r.history]
        path = train_tokenizer(texts, self.backbone.tokenizer_kind, vocab_size=self.hparams.tokenizer_vocab_size,
                               lowercase=self.hparams.lowercase)
        rank_zero_info(f"Tokenizer: trained {self.backbone.tokenizer_kind} on {len(texts)} training texts, cached at {path}")
        return str(path)

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}
        for split in wanted.get(stage, ("train", "val", "test", "predict")):
            if split in self.records and split not in self.datasets:
                self.datasets[split] = self._encode(split)

    def _encode(self, split: str) -> TokenizedDataset:
        records = self.records[split]
        encoded = cached_encode(self.tokenizer, records, self.hparams.max_length, self.hparams.max_history_turns)
        labels = None
        if split != "predict" and self.label_names is not None:
            index = {name: i for i, name in enumerate(self.label_names)}
            labels = [index[r.label] for r in records]
        return TokenizedDataset(encoded, labels, [r.id for r in records])

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self.datasets:
            self.setup({"train": "fit", "val": "validate"}.get(split, split))
        if split not in self.datasets:
            raise ConfigError(f"data.{split}_file", f"no {split} data", f"set data.{split}_file")
        dataset = self.datasets[split]
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        batch_size = self.hparams.batch_size if shuffle else (self.hparams.eval_batch_size or 2 * self.hparams.batch_size)
        sampler = LengthGroupedBatchSampler(dataset.lengths, batch_size, shuffle=shuffle,
                                            group_by_length=self.hparams.group_by_length, seed=self.hparams.seed,
                                            num_replicas=world, rank=rank)
        workers = self.hparams.num_workers
        return DataLoader(dataset, batch_sampler=sampler, num_workers=workers, persistent_workers=workers > 0,
                          collate_fn=PadCollator(self.tokenizer.pad_token_id, self.hparams.pad_to_multiple_of))

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", shuffle=False)

    def predict_records(self) -> list[IntentRecord]:
        """The records of the predict file, in file order (batches come sorted by length; match them by id)."""
        return self.records.get("predict", [])


DEMO_ROOT = Path(__file__).parent / "demo"


class DomainDataModule(IntentDataModule):
    """An :class:`IntentDataModule` for one business domain, which trains on our bundled demo data for that domain
    and ``data.language`` unless the user gives their own ``train_file`` (then only the user's files are read)."""

    def __init__(self, train_file: str | None = None, val_file: str | None = None, test_file: str | None = None,
                 **kwargs):
        if train_file is None:
            demo = DEMO_ROOT / self.domain / kwargs.get("language", "en")
            train_file = str(demo / "train.jsonl")
            val_file = val_file or str(demo / "val.jsonl")
            test_file = test_file or str(demo / "test.jsonl")
        super().__init__(train_file=train_file, val_file=val_file, test_file=test_file, **kwargs)
