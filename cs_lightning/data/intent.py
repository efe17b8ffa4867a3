"""Intent recognition data: messages (with optional earlier turns) and their labels."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_info

from cs_lightning.data.base import DEMO_ROOT, CSDataModule
from cs_lightning.data.batching import PadCollator, TokenizedDataset
from cs_lightning.data.encoding import cached_encode
from cs_lightning.data.schema import ColumnMap, check_known_labels, read_intent_records
from cs_lightning.errors import ConfigError, DataError


class IntentDataModule(CSDataModule):
    """Intent recognition on the user's files: CSV, TSV, JSON Lines or JSON arrays with ``text``, ``label`` and
    optional ``history`` and ``id`` (other column names through the ``*_column`` settings). The label set is the
    sorted names of the training labels; the validation carve is stratified by label.

    Args:
        max_length: tokens per input, message plus history; the oldest history goes first.
        oos_label: the out-of-scope label (``oos``, ``fallback``): allowed in val/test even when train has none;
            the model answers it when unsure (see ``IntentClassifier.oos_target``).
        holdout_intents: remove this many intents (chosen with ``seed``) from training and relabel them
            ``oos_label`` in val and test, to measure out-of-scope detection on any intent dataset.
        text_column: column of the message (default: text, query, utterance, sentence, message or content).
        label_column: column of the label (default: label, category, intent or class).
        history_column: column of the earlier turns (default: history or context).
        id_column: column of a record id (default: id, guid or uid; else ``file:line``).
        trained_labels: the label set in a trained model's order, instead of the training file's: cs-train sets
            it from the checkpoint for ``validate``, ``test`` and ``predict``, so every class keeps the index it was
            trained with and no training file is needed. Evaluation labels outside it are out of scope (with ``oos_label``)
            or an error.
        trained_label_counts: with ``trained_labels``, the training examples per label the model was trained on
            (for class weights); set by cs-train from the checkpoint too.
    """

    task = "intent"

    def __init__(self, max_length: int = 128, oos_label: str | None = None, holdout_intents: int = 0,
                 text_column: str | None = None, label_column: str | None = None, history_column: str | None = None,
                 id_column: str | None = None, trained_labels: list[str] | None = None,
                 trained_label_counts: list[int] | None = None, **kwargs):
        if holdout_intents and not oos_label:
            raise ConfigError("data.holdout_intents", "needs data.oos_label", "set data.oos_label: oos")
        self.columns = ColumnMap(text_column, label_column, history_column, id_column)
        self.oos_label, self.holdout_intents = oos_label, holdout_intents
        self.label_names: list[str] | None = list(trained_labels) if trained_labels else None
        self.fixed_labels = bool(trained_labels)
        self.label_counts: list[int] | None = list(trained_label_counts) if trained_labels and trained_label_counts \
            else None
        self.held_out: list[str] = []
        super().__init__(**kwargs)

    def uses_demo_data(self) -> bool:
        # evaluating a trained model (its labels given) never falls back to the demo: its labels are another set
        return super().uses_demo_data() and not self.fixed_labels

    def demo_folder(self, language: str) -> Path:
        return DEMO_ROOT / self.domain / language

    def read_files(self) -> None:
        files, oos = self.files, self.oos_label
        if files["train"]:
            train = read_intent_records(files["train"], self.columns, labelled=True)
            if self.holdout_intents and not self.fixed_labels:
                in_scope = [n for n in sorted({r.label for r in train}) if n != oos]
                if self.holdout_intents >= len(in_scope) - 1:
                    raise ConfigError("data.holdout_intents", f"{self.holdout_intents} of {len(in_scope)} intents",
                                      "hold out fewer intents than the data has, leaving at least two")
                self.held_out = sorted(random.Random(self.hparams.seed).sample(in_scope, self.holdout_intents))
            train = self.carve(train, lambda r: r.label)  # stratified over every intent, held-out ones too
            if not self.fixed_labels:  # with a trained model's labels the training file only feeds carved splits
                self._set_training_records(train)
        for split in ("val", "test"):
            if files[split]:
                records = self._relabel_out_of_scope(read_intent_records(files[split], self.columns, labelled=True))
                if self.label_names is not None:
                    check_known_labels(records, self.label_names, files[split], allowed_extra=[oos] if oos else ())
                self.records[split] = records
            elif split in self.records:
                self.records[split] = self._relabel_out_of_scope(self.records[split])
        if files["predict"]:
            self.records["predict"] = read_intent_records(files["predict"], self.columns, labelled=False)

    def _set_training_records(self, train: list) -> None:
        self.records["train"] = [r for r in train if r.label not in self.held_out]
        self.label_names = sorted({r.label for r in self.records["train"]})
        if len(self.label_names) < 2:
            raise DataError(self.files["train"], f"only one label ({self.label_names[0]!r}) in the training data",
                            field="label", fix="an intent classifier needs at least two intents")
        counts = Counter(r.label for r in self.records["train"])
        self.label_counts = [counts[name] for name in self.label_names]

    def _relabel_out_of_scope(self, records: list) -> list:
        """Held-out intents are out of scope in evaluation. With a trained model's labels the held-out names are
        not known again: every label outside the model's set is out of scope then."""
        if self.fixed_labels and self.holdout_intents:
            outside = {r.label for r in records} - set(self.label_names) - {self.oos_label}
        else:
            outside = set(self.held_out)
        return [replace(r, label=self.oos_label) if r.label in outside else r for r in records] if outside else records

    def training_texts(self) -> list[str]:
        train = self.records["train"]
        return [r.text for r in train] + [t.text for r in train for t in r.history]

    def label_summary(self) -> str:
        """One line on the training label distribution (imbalance shows here first)."""
        if not self.label_counts:
            return ""
        pairs = sorted(zip(self.label_counts, self.label_names))
        total = sum(self.label_counts)
        (low, low_name), (high, high_name) = pairs[0], pairs[-1]
        return (f"Labels: {len(pairs)} in {total} training examples; fewest {low} ({low_name}), most {high} "
                f"({high_name}), ratio {high / max(low, 1):.1f}" + ("; consider model.class_weights: true"
                                                                    if high >= 10 * low else ""))

    def setup(self, stage: str | None = None) -> None:
        if stage == "fit" and "train" not in self.datasets and self.label_counts:
            rank_zero_info(self.label_summary())
        super().setup(stage)

    def encode(self, split: str) -> TokenizedDataset:
        records = self.records[split]
        hp = self.hparams
        encoded = cached_encode(self.tokenizer, records, hp.max_length, hp.max_history_turns)
        labels = None
        if split != "predict" and self.label_names is not None:
            index = {name: i for i, name in enumerate(self.label_names)}
            # an out-of-scope label the model has no class for gets the index after the last class
            labels = [index.get(r.label, len(self.label_names)) for r in records]
        return TokenizedDataset(encoded, labels, [r.id for r in records])

    def collator(self, generation: bool):
        return PadCollator(self.tokenizer.pad_token_id, self.padding())
