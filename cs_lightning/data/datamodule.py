"""The DataModule: read and validate the files, settle the label set and the tokenizer, tokenize each split once
(cached), and serve length-grouped, dynamically padded batches, for intent recognition or reply generation."""

from __future__ import annotations

import random
from dataclasses import replace
from collections import Counter, defaultdict
from pathlib import Path
from typing import Sequence

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from cs_lightning.backbones.base import TASKS
from cs_lightning.data.batching import LengthGroupedBatchSampler, PadCollator, ReplyCollator, TokenizedDataset
from cs_lightning.data.dialogue import SPECIAL_MARKERS, prediction_examples, read_dialogues, reply_examples
from cs_lightning.data.encoding import cached_encode, cached_encode_replies
from cs_lightning.data.schema import ColumnMap, check_known_labels, read_intent_records
from cs_lightning.errors import ConfigError, DataError
from cs_lightning.pretrained import resolve_model
from cs_lightning.registry import get_backbone
from cs_lightning.rules import BusinessRules
from cs_lightning.tokenization import add_marker_tokens, train_tokenizer

LANGUAGES = ("en", "zh")
DEMO_ROOT = Path(__file__).parent / "demo"


def stratified_split(records: Sequence, fraction: float, seed: int, key=lambda r: r.label):
    """Split off about ``fraction`` of each group (at least one, never a group's only member), reproducibly."""
    groups: dict = defaultdict(list)
    for rec in records:
        groups[key(rec)].append(rec)
    rng = random.Random(seed)
    keep, carved = [], []
    for name in sorted(groups, key=str):
        group = list(groups[name])
        rng.shuffle(group)
        n = 0 if len(group) < 2 else min(len(group) - 1, max(1, round(len(group) * fraction)))
        carved += group[:n]
        keep += group[n:]
    return keep, carved


class CSDataModule(pl.LightningDataModule):
    """Customer-service data for intent recognition (``task: intent``) or reply generation (``task: reply``).

    Files are read and validated when the module is built, before any training, so a bad line stops the run at once
    with ``file:line: problem (fix)``; the label set (sorted names from the training file), the tokenizer and the
    business rules are then known and handed to the model by the CLI.

    Intent files: CSV, TSV, JSON Lines or JSON arrays with ``text``, ``label`` and optional ``history`` and ``id``.
    Dialogue files: JSON Lines of ``{"id", "domain", "turns": [{"role": "user"|"agent", "text"}]}``; every agent
    turn is one example whose context is the turns before it.

    Args:
        task: ``intent`` or ``reply``; cs-train sets it from the model class when left empty.
        train_file: training data.
        val_file: validation data; when missing, ``val_fraction`` of train is carved out (stratified by label for
            intents, whole dialogues for replies).
        test_file: test data.
        predict_file: input to label (intents) or to answer (dialogues: the next agent reply of each).
        batch_size: samples per training batch (per device).
        eval_batch_size: samples per evaluation batch; default ``2 * batch_size``.
        language: ``en`` or ``zh``; chooses demo data, metrics tokenization and tokenizer settings.
        max_length: intent: tokens per input, message plus history; the oldest history goes first.
        max_history_turns: earlier turns kept as context.
        max_context_tokens: reply: tokens of context at most (newest kept).
        max_reply_tokens: reply: tokens of a target reply at most.
        domain_prefix: reply: start the context with the dialogue's domain (``banking:``).
        rules_file: reply: business rules (YAML/JSON) for generation and evaluation; domains ship their own.
        generate_samples: reply: validation/test examples that get a generated reply (a fixed, seeded sample).
        dialogue_format: reply: ``jsonl`` (ours), or read a public dataset as it is: ``sgd`` (Schema-Guided
            Dialogue files or folder), ``crosswoz`` (CrossWOZ json or json.zip).
        oos_label: intent: the out-of-scope label (``oos``, ``fallback``): allowed in val/test even when train has
            none; the model answers it when unsure (see ``IntentClassifier.oos_target``).
        holdout_intents: intent: remove this many intents (chosen with ``seed``) from training and relabel them
            ``oos_label`` in val and test, to measure out-of-scope detection on any intent dataset.
        val_fraction: share carved from train for validation when ``val_file`` is not given.
        test_fraction: share carved from train for testing when ``test_file`` is not given (default: none).
        seed: seed of the validation carve, the generation sample and the batch order.
        text_column: intent column of the message (default: text, query, utterance, sentence, message or content).
        label_column: intent column of the label (default: label, category, intent or class).
        history_column: intent column of the earlier turns (default: history or context).
        id_column: intent column of a record id (default: id, guid or uid; else ``file:line``).
        group_by_length: batch samples of similar length together (much less padding on short messages).
        pad_to_multiple_of: round padded lengths up to a multiple of this; default: 8 on GPU (tensor cores), exact on
            CPU; 1 pads exactly everywhere.
        pad_to_buckets: pad every batch to the smallest of these lengths that holds it, e.g. ``[16, 32, 64, 128]``:
            a few fixed shapes, for ``model.compile: true`` (otherwise torch.compile recompiles per batch length).
        num_workers: data-loading worker processes.
        backbone: backbone plugin name; linked from ``model.backbone`` by the CLI.
        tokenizer: tokenizer source (hub id or folder); linked from ``model.model_name_or_path``. When None, a
            tokenizer is trained on the training texts and cached.
        tokenizer_vocab_size: vocabulary size of a trained tokenizer.
        lowercase: fold case in a trained tokenizer (default: yes for intents, no for replies).
        trust_remote_code: let the tokenizer run code shipped with hub files (cs-train links the model's setting).
    """

    domain: str | None = None

    def __init__(self, task: str | None = None, train_file: str | None = None, val_file: str | None = None,
                 test_file: str | None = None, predict_file: str | None = None, batch_size: int = 32,
                 eval_batch_size: int | None = None, language: str = "en", max_length: int = 128,
                 max_history_turns: int = 4, max_context_tokens: int = 192, max_reply_tokens: int = 64,
                 domain_prefix: bool = True, rules_file: str | None = None, generate_samples: int = 64,
                 dialogue_format: str = "jsonl",
                 oos_label: str | None = None, holdout_intents: int = 0,
                 val_fraction: float = 0.1, test_fraction: float = 0.0, seed: int = 42, text_column: str | None = None,
                 label_column: str | None = None, history_column: str | None = None, id_column: str | None = None,
                 group_by_length: bool = True, pad_to_multiple_of: int | None = None,
                 pad_to_buckets: list[int] | None = None, num_workers: int = 0,
                 backbone: str = "bert", tokenizer: str | None = None, tokenizer_vocab_size: int = 8000,
                 lowercase: bool | None = None, trust_remote_code: bool = False):
        super().__init__()
        task = task or "intent"
        if task not in TASKS:
            raise ConfigError("data.task", f"unknown task {task!r}", f"use one of {', '.join(TASKS)}")
        if language not in LANGUAGES:
            raise ConfigError("data.language", f"unknown language {language!r}", f"use one of {', '.join(LANGUAGES)}")
        if batch_size < 1:
            raise ConfigError("data.batch_size", f"must be at least 1, got {batch_size}")
        if holdout_intents and not oos_label:
            raise ConfigError("data.holdout_intents", "needs data.oos_label", "set data.oos_label: oos")
        for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0 <= value < 1:
                raise ConfigError(f"data.{name}", f"must be in [0, 1), got {value}")
        self.save_hyperparameters()
        self.task = task
        self.lowercase = (task == "intent") if lowercase is None else lowercase
        self.columns = ColumnMap(text_column, label_column, history_column, id_column)
        self.files = {"train": train_file, "val": val_file, "test": test_file, "predict": predict_file}
        self.records: dict[str, list] = {}
        self.datasets: dict[str, TokenizedDataset] = {}
        self._resume: dict | None = None  # a saved training-sampler position (mid-epoch resume)
        self.label_names: list[str] | None = None
        self.label_counts: list[int] | None = None
        self.backbone = get_backbone(backbone)
        self.backbone.trust_remote_code = trust_remote_code  # linked from model.trust_remote_code by cs-train
        if task not in self.backbone.supported_tasks:
            raise ConfigError("model.backbone", f"backbone '{backbone}' does not support task '{task}'",
                              f"it supports: {', '.join(self.backbone.supported_tasks)}")
        self.rules_path = rules_file
        self.rules = BusinessRules.load(rules_file) if rules_file else BusinessRules()
        if task == "intent":
            self._read_intent_files()
        else:
            self._read_dialogue_files()
        self.tokenizer_path = self._resolve_tokenizer(tokenizer)
        self.tokenizer = self.backbone.load_tokenizer(self.tokenizer_path)

    # ------------------------------------------------------------------ reading
    def _require_some_files(self) -> None:
        if not self.records:
            raise ConfigError("data.train_file", "no data files given",
                              "set data.train_file (and optionally val_file, test_file, predict_file)")

    def _carve(self, train: list, key, convert=lambda records: records) -> list:
        """Carve test, then validation records from train when their files are not given (stratified by ``key``;
        dialogues are carved whole, so no conversation is split between train and evaluation)."""
        hp = self.hparams
        share = 0.0  # of the original train already carved
        for split, fraction, seed in (("test", hp.test_fraction, hp.seed + 1), ("val", hp.val_fraction, hp.seed)):
            if self.files[split] is None and fraction > 0:
                train, carved = stratified_split(train, fraction / (1 - share), seed, key=key)
                self.records[split] = convert(carved)
                share += fraction
        return train

    def _read_intent_files(self) -> None:
        files = self.files
        hp, oos = self.hparams, self.hparams.oos_label
        self.held_out: list[str] = []
        if files["train"]:
            train = read_intent_records(files["train"], self.columns, labelled=True)
            names = sorted({r.label for r in train})
            if hp.holdout_intents:
                in_scope = [n for n in names if n != oos]
                if hp.holdout_intents >= len(in_scope) - 1:
                    raise ConfigError("data.holdout_intents", f"{hp.holdout_intents} of {len(in_scope)} intents",
                                      "hold out fewer intents than the data has, leaving at least two")
                self.held_out = sorted(random.Random(hp.seed).sample(in_scope, hp.holdout_intents))
            train = self._carve(train, lambda r: r.label)  # stratified over every intent, held-out ones too
            self.records["train"] = [r for r in train if r.label not in self.held_out]
            self.label_names = sorted({r.label for r in self.records["train"]})
            if len(self.label_names) < 2:
                raise DataError(files["train"], f"only one label ({self.label_names[0]!r}) in the training data",
                                field="label", fix="an intent classifier needs at least two intents")
            counts = Counter(r.label for r in self.records["train"])
            self.label_counts = [counts[name] for name in self.label_names]
        for split in ("val", "test"):
            if files[split]:
                records = read_intent_records(files[split], self.columns, labelled=True)
                if self.label_names is not None:
                    check_known_labels(records, self.label_names + self.held_out, files[split],
                                       allowed_extra=[oos] if oos else ())
                self.records[split] = records
            if self.held_out and split in self.records:  # held-out intents are out of scope in evaluation
                self.records[split] = [replace(r, label=oos) if r.label in self.held_out else r
                                       for r in self.records[split]]
        if files["predict"]:
            self.records["predict"] = read_intent_records(files["predict"], self.columns, labelled=False)
        self._require_some_files()

    def _read_dialogue_files(self) -> None:
        files, fmt = self.files, self.hparams.dialogue_format
        if files["train"]:
            train = read_dialogues(files["train"], file_format=fmt)
            self.records["train"] = reply_examples(self._carve(train, lambda d: d.domain or "", reply_examples))
        for split in ("val", "test"):
            if files[split]:
                self.records[split] = reply_examples(read_dialogues(files[split], file_format=fmt))
        if files["predict"]:
            self.records["predict"] = prediction_examples(read_dialogues(files["predict"], require_agent=False,
                                                                         file_format=fmt))
        self._require_some_files()

    def _training_texts(self) -> list[str]:
        train = self.records["train"]
        if self.task == "intent":
            return [r.text for r in train] + [t.text for r in train for t in r.history]
        seen, texts = set(), []
        for ex in train:  # each turn once, although it is context of every later reply
            for text in [t.text for t in ex.context] + [ex.reply]:
                if text not in seen:
                    seen.add(text)
                    texts.append(text)
        return texts

    def _resolve_tokenizer(self, tokenizer: str | None) -> str:
        if tokenizer is not None:
            path = resolve_model(tokenizer, key="model.model_name_or_path").path
        elif "train" not in self.records:
            raise ConfigError("model.model_name_or_path", "no tokenizer: no model source and no training file to "
                              "train one on", "set model.model_name_or_path, or data.train_file")
        else:
            texts = self._training_texts()
            path = str(train_tokenizer(texts, self.backbone.tokenizer_kind, self.hparams.tokenizer_vocab_size,
                                       lowercase=self.lowercase))
            rank_zero_info(f"Tokenizer: trained {self.backbone.tokenizer_kind} on {len(texts)} training texts, "
                           f"cached at {path}")
        if self.task == "reply":  # speaker markers become special tokens the model learns
            path = str(add_marker_tokens(path, list(SPECIAL_MARKERS.values()), self.backbone.load_tokenizer))
        return path

    # ------------------------------------------------------------------ Lightning hooks
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
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}
        for split in wanted.get(stage, ("train", "val", "test", "predict")):
            if split in self.records and split not in self.datasets:
                self.datasets[split] = self._encode(split)

    def _encode(self, split: str) -> TokenizedDataset:
        records = self.records[split]
        hp = self.hparams
        if self.task == "reply":
            encoded = cached_encode_replies(self.tokenizer, records, self.backbone.reply_kind, hp.max_context_tokens,
                                            hp.max_reply_tokens, hp.max_history_turns, hp.domain_prefix)
            extras = [{"reference": r.reply, "context": r.context, "intent": r.intent} for r in records]
            return TokenizedDataset(encoded, None, [r.id for r in records], extras)
        encoded = cached_encode(self.tokenizer, records, hp.max_length, hp.max_history_turns)
        labels = None
        if split != "predict" and self.label_names is not None:
            index = {name: i for i, name in enumerate(self.label_names)}
            # an out-of-scope label the model has no class for gets the index after the last class
            labels = [index.get(r.label, len(self.label_names)) for r in records]
        return TokenizedDataset(encoded, labels, [r.id for r in records])

    def _padding(self) -> int | list[int] | None:
        """Length buckets, else the multiple to round to: 8 on GPU unless set (tensor cores work on multiples of 8;
        on CPU rounding only adds work)."""
        hp = self.hparams
        if hp.pad_to_buckets:
            return list(hp.pad_to_buckets)
        if hp.pad_to_multiple_of is not None:
            return hp.pad_to_multiple_of if hp.pad_to_multiple_of > 1 else None
        trainer = self.trainer
        on_gpu = trainer is not None and getattr(trainer.strategy.root_device, "type", "cpu") == "cuda"
        return 8 if on_gpu else None

    def _collator(self, generation: bool):
        if self.task == "intent":
            return PadCollator(self.tokenizer.pad_token_id, self._padding())
        return ReplyCollator(self.tokenizer.pad_token_id, self.backbone.reply_kind, generation,
                             self._padding())

    def _loader(self, split: str, shuffle: bool, generation: bool = False, subset: int | None = None) -> DataLoader:
        if split not in self.datasets:
            self.setup({"train": "fit", "val": "validate"}.get(split, split))
        if split not in self.datasets:
            raise ConfigError(f"data.{split}_file", f"no {split} data", f"set data.{split}_file")
        dataset = self.datasets[split]
        lengths = dataset.lengths
        if subset is not None and subset < len(dataset):
            chosen = sorted(random.Random(self.hparams.seed).sample(range(len(dataset)), subset))
            dataset = dataset.subset(chosen)
            lengths = dataset.lengths
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        hp = self.hparams
        batch_size = hp.batch_size if shuffle else (hp.eval_batch_size or 2 * hp.batch_size)
        resume, self._resume = (self._resume, None) if shuffle else (None, None)
        sampler = LengthGroupedBatchSampler(lengths, batch_size, shuffle=shuffle, group_by_length=hp.group_by_length,
                                            seed=hp.seed, num_replicas=world, rank=rank, resume=resume)
        workers = hp.num_workers
        return DataLoader(dataset, batch_sampler=sampler, num_workers=workers, persistent_workers=workers > 0,
                          collate_fn=self._collator(generation))

    # The position in the training epoch travels in checkpoints as the data module's state (plain values), so a run
    # resumed mid-epoch trains on the rest of that epoch's batches, in the same order, instead of starting it again.
    # (Lightning's own stateful-loader path cannot be used: the schedule's length is asked for while the optimizer
    # is configured, which builds the training loader before Lightning restores loader states.)
    def state_dict(self) -> dict:
        trainer = self.trainer
        loader = getattr(trainer, "train_dataloader", None) if trainer is not None else None
        sampler = getattr(loader, "batch_sampler", None)
        if not isinstance(sampler, LengthGroupedBatchSampler):
            return {}
        return {"train_sampler": sampler.state_dict(trainer.fit_loop.epoch_loop.batch_progress.current.processed)}

    def load_state_dict(self, state_dict: dict) -> None:
        self._resume = state_dict.get("train_sampler")

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def _eval_loaders(self, split: str):
        if self.task == "intent":
            return self._loader(split, shuffle=False)
        # replies: loss and perplexity on every example, generation on a bounded, fixed sample
        return [self._loader(split, shuffle=False),
                self._loader(split, shuffle=False, generation=True, subset=self.hparams.generate_samples)]

    def val_dataloader(self):
        return self._eval_loaders("val") if "val" in self.records else []  # no validation data: Lightning skips it

    def test_dataloader(self):
        return self._eval_loaders("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", shuffle=False, generation=True)

    def predict_records(self) -> list:
        """The records of the predict file, in file order (batches come sorted by length; match them by id)."""
        return self.records.get("predict", [])


class IntentDataModule(CSDataModule):
    """Intent recognition on the user's files; see :class:`CSDataModule` for every setting."""

    def __init__(self, task: str | None = "intent", **kwargs):
        super().__init__(task=task or "intent", **kwargs)


class DialogueDataModule(CSDataModule):
    """Reply generation on the user's dialogue files; see :class:`CSDataModule` for every setting."""

    def __init__(self, task: str | None = "reply", **kwargs):
        super().__init__(task=task or "reply", **kwargs)


class DomainDataModule(CSDataModule):
    """A :class:`CSDataModule` for one business domain. Without a ``train_file`` it trains on our bundled demo data
    for the domain, the task and ``data.language`` (intent messages or dialogues), and applies the domain's
    business rules unless ``rules_file`` names others."""

    def __init__(self, task: str | None = None, train_file: str | None = None, val_file: str | None = None,
                 test_file: str | None = None, rules_file: str | None = None, **kwargs):
        language = kwargs.get("language", "en")
        demo = DEMO_ROOT / self.domain
        if train_file is None:
            folder = demo / language if (task or "intent") == "intent" else demo / "dialogues" / language
            train_file = str(folder / "train.jsonl")
            val_file = val_file or str(folder / "val.jsonl")
            test_file = test_file or str(folder / "test.jsonl")
        if rules_file is None and (task or "intent") == "reply" and (demo / "rules.yaml").exists():
            rules_file = str(demo / "rules.yaml")
        super().__init__(task=task, train_file=train_file, val_file=val_file, test_file=test_file,
                         rules_file=rules_file, **kwargs)
