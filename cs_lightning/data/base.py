"""What every cs-lightning DataModule shares: reading the files once when built, carving validation and test
splits, settling the tokenizer, tokenizing each split once (cached), and serving length-grouped, dynamically padded,
DDP-aware batches that resume mid-epoch. The task-specific parts live in the subclasses: :mod:`.intent` (messages
and labels) and :mod:`.reply` (dialogues and replies)."""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path
from typing import ClassVar, Sequence

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from cs_lightning.data.batching import LengthGroupedBatchSampler, TokenizedDataset
from cs_lightning.errors import ConfigError
from cs_lightning.pretrained import resolve_model
from cs_lightning.registry import resolve_backbone
from cs_lightning.tokenization import train_tokenizer

LANGUAGES = ("en", "zh")
DEMO_ROOT = Path(__file__).parent / "demo"
SPLITS = ("train", "val", "test", "predict")


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


class TrainLoader(DataLoader):
    """The training loader. Its position in the epoch travels in checkpoints as the data module's state
    (:meth:`CSDataModule.state_dict`) and is restored when the loader is built, so for Lightning it is a resumable
    loader with nothing left to restore (without this, a mid-epoch resume warns that the loader is not resumable)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state_dict: dict) -> None:
        pass


class CSDataModule(pl.LightningDataModule):
    """Base of the task data modules (:class:`IntentDataModule`, :class:`DialogueDataModule`); not used directly.

    Files are read and validated when the module is built, before any training, so a bad line stops the run at once
    with ``file:line: problem (fix)``; the tokenizer (and, per task, the label set or the business rules) are then
    known and handed to the model by the CLI.

    Args:
        train_file: training data. Domain modules (``EcommerceDataModule``...) default to their bundled demo data
            in ``language``.
        val_file: validation data; when missing, ``val_fraction`` of train is carved out.
        test_file: test data.
        predict_file: input to predict for.
        batch_size: samples per training batch (per device).
        eval_batch_size: samples per evaluation batch; default ``2 * batch_size``.
        language: ``en`` or ``zh``; chooses demo data, metrics tokenization and tokenizer settings.
        max_history_turns: earlier turns kept as context.
        val_fraction: share carved from train for validation when ``val_file`` is not given.
        test_fraction: share carved from train for testing when ``test_file`` is not given (default: none).
        seed: seed of the validation carve, the generation sample and the batch order.
        group_by_length: batch samples of similar length together (much less padding on short messages).
        mega_batch: with ``group_by_length``, each epoch's random order is cut into windows of this many batches,
            each sorted by length, cut into batches, and the batches shuffled: larger windows pad less, smaller ones
            mix lengths more (on Banking77 at batch 32: 6.2% padding at 50, 2.1% at 200, the default; test accuracy
            0.9260 and 0.9273).
        pad_to_multiple_of: round padded lengths up to a multiple of this; default: 8 on GPU (tensor cores), exact on
            CPU; 1 pads exactly everywhere.
        pad_to_buckets: pad every batch to the smallest of these lengths that holds it, e.g. ``[16, 32, 64, 128]``:
            a few fixed shapes, for ``model.compile: true`` (otherwise torch.compile recompiles per batch length).
        num_workers: data-loading worker processes.
        backbone: backbone plugin name, or ``auto`` (chosen by the model type); linked from ``model.backbone`` by
            the CLI.
        model_type: Hugging Face model type of a model built from scratch (``qwen2``...); linked from
            ``model.model_type``.
        tokenizer: tokenizer source (hub id or folder); linked from ``model.model_name_or_path``. When None, a
            tokenizer is trained on the training texts and cached.
        tokenizer_vocab_size: vocabulary size of a trained tokenizer.
        lowercase: fold case in a trained tokenizer (default: yes for intents, no for replies).
        trust_remote_code: let the tokenizer run code shipped with hub files (cs-train links the model's setting).
    """

    #: the task this module serves, matched against the model's by cs-train
    task: ClassVar[str] = ""
    #: business domain of the bundled demo data (``ecommerce``, ``finance``, ``medical``); None: the user's files
    domain: ClassVar[str | None] = None

    def __init__(self, train_file: str | None = None, val_file: str | None = None, test_file: str | None = None,
                 predict_file: str | None = None, batch_size: int = 32, eval_batch_size: int | None = None,
                 language: str = "en", max_history_turns: int = 4, val_fraction: float = 0.1,
                 test_fraction: float = 0.0, seed: int = 42, group_by_length: bool = True, mega_batch: int = 200,
                 pad_to_multiple_of: int | None = None, pad_to_buckets: list[int] | None = None, num_workers: int = 0,
                 backbone: str = "bert", model_type: str | None = None, tokenizer: str | None = None,
                 tokenizer_vocab_size: int = 8000, lowercase: bool | None = None, trust_remote_code: bool = False):
        super().__init__()
        if not self.task:
            raise ConfigError("data.class_path", f"{type(self).__name__} serves no task",
                              "use cs_lightning.data.IntentDataModule, DialogueDataModule or a domain module")
        if language not in LANGUAGES:
            raise ConfigError("data.language", f"unknown language {language!r}", f"use one of {', '.join(LANGUAGES)}")
        if batch_size < 1:
            raise ConfigError("data.batch_size", f"must be at least 1, got {batch_size}")
        if mega_batch < 1:
            raise ConfigError("data.mega_batch", f"must be at least 1, got {mega_batch}",
                              "give the batches per length-sorted window, e.g. 50")
        for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0 <= value < 1:
                raise ConfigError(f"data.{name}", f"must be in [0, 1), got {value}")
        if train_file is None and self.uses_demo_data():
            folder = self.demo_folder(language)
            train_file = str(folder / "train.jsonl")
            val_file = val_file or str(folder / "val.jsonl")
            test_file = test_file or str(folder / "test.jsonl")
        self.save_hyperparameters()  # every class's arguments as given, with the demo files filled in
        self.lowercase = (self.task == "intent") if lowercase is None else lowercase
        self.trust_remote_code = trust_remote_code
        self.files = {"train": train_file, "val": val_file, "test": test_file, "predict": predict_file}
        self.records: dict[str, list] = {}
        self.datasets: dict[str, TokenizedDataset] = {}
        self._resume: dict | None = None  # a saved training-sampler position (mid-epoch resume)
        self.backbone = resolve_backbone(backbone, tokenizer, model_type)  # the model resolves it the same way
        if self.task not in self.backbone.supported_tasks:
            raise ConfigError("model.backbone", f"{self.backbone.describe()} does not support task '{self.task}'",
                              f"it supports: {', '.join(self.backbone.supported_tasks)}")
        self.read_files()
        if not self.records:
            raise ConfigError("data.train_file", "no data files given",
                              "set data.train_file (and optionally val_file, test_file, predict_file)")
        self.tokenizer_path = self._resolve_tokenizer(tokenizer)
        self.tokenizer = self.load_tokenizer(self.tokenizer_path)

    # ------------------------------------------------------------------ what each task provides
    def uses_demo_data(self) -> bool:
        """Whether a module without a training file reads its domain's bundled demo files."""
        return self.domain is not None

    def demo_folder(self, language: str) -> Path:
        """The folder of this domain's bundled demo files for the task and ``language``."""
        raise NotImplementedError

    def read_files(self) -> None:
        """Read and validate ``self.files`` into ``self.records`` (carving val/test from train as configured)."""
        raise NotImplementedError

    def training_texts(self) -> list[str]:
        """The texts a tokenizer is trained on when none is given (each once)."""
        raise NotImplementedError

    def encode(self, split: str) -> TokenizedDataset:
        """The records of ``split`` as token ids (cached by content)."""
        raise NotImplementedError

    def collator(self, generation: bool):
        """The batch collator (padding, labels) for training/evaluation or, with ``generation``, for prompts."""
        raise NotImplementedError

    def eval_loaders(self, split: str):
        """The loader(s) of an evaluation split."""
        return self.loader(split, shuffle=False)

    # ------------------------------------------------------------------ shared
    def load_tokenizer(self, path: str):
        """The backbone's tokenizer at ``path``, with this run's remote-code setting."""
        return self.backbone.load_tokenizer(path, self.trust_remote_code)

    def carve(self, train: list, key, convert=lambda records: records) -> list:
        """Carve test, then validation records from train when their files are not given (stratified by ``key``);
        returns what stays for training."""
        hp = self.hparams
        share = 0.0  # of the original train already carved
        for split, fraction, seed in (("test", hp.test_fraction, hp.seed + 1), ("val", hp.val_fraction, hp.seed)):
            if self.files[split] is None and fraction > 0:
                train, carved = stratified_split(train, fraction / (1 - share), seed, key=key)
                self.records[split] = convert(carved)
                share += fraction
        return train

    def _resolve_tokenizer(self, tokenizer: str | None) -> str:
        if tokenizer is not None:
            return resolve_model(tokenizer, key="model.model_name_or_path").path
        if "train" not in self.records:
            raise ConfigError("model.model_name_or_path", "no tokenizer: no model source and no training file to "
                              "train one on", "set model.model_name_or_path, or data.train_file")
        return self._train_tokenizer(self.backbone.tokenizer_kind)

    def _train_tokenizer(self, kind: str) -> str:
        """A tokenizer of ``kind`` trained on the training texts (cached by content)."""
        texts = self.training_texts()
        path = str(train_tokenizer(texts, kind, self.hparams.tokenizer_vocab_size, lowercase=self.lowercase))
        rank_zero_info(f"Tokenizer: trained {kind} on {len(texts)} training texts, cached at {path}")
        return path

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}
        for split in wanted.get(stage, SPLITS):
            if split in self.records and split not in self.datasets:
                self.datasets[split] = self.encode(split)

    def padding(self) -> int | list[int] | None:
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

    def loader(self, split: str, shuffle: bool, generation: bool = False, subset: int | None = None) -> DataLoader:
        """A loader over ``split``: length-grouped batches, this rank's share, ``subset`` a seeded sample."""
        if split not in self.datasets:
            self.setup({"train": "fit", "val": "validate"}.get(split, split))
        if split not in self.datasets:
            raise ConfigError(f"data.{split}_file", f"no {split} data", f"set data.{split}_file")
        dataset = self.datasets[split]
        if subset is not None and subset < len(dataset):
            dataset = dataset.subset(sorted(random.Random(self.hparams.seed).sample(range(len(dataset)), subset)))
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        hp = self.hparams
        batch_size = hp.batch_size if shuffle else (hp.eval_batch_size or 2 * hp.batch_size)
        resume, self._resume = (self._resume, None) if shuffle else (None, None)
        sampler = LengthGroupedBatchSampler(dataset.lengths, batch_size, shuffle=shuffle,
                                            group_by_length=hp.group_by_length, mega_batch=hp.mega_batch,
                                            seed=hp.seed, num_replicas=world,
                                            rank=rank, resume=resume)
        workers = hp.num_workers
        # a generator of its own: starting an epoch then draws no number from torch's global generator, which
        # dropout uses (a resumed run restores that one, see callbacks.RandomState)
        generator = torch.Generator().manual_seed(hp.seed)
        return (TrainLoader if shuffle else DataLoader)(dataset, batch_sampler=sampler, num_workers=workers,
                                                        persistent_workers=workers > 0, generator=generator,
                                                        collate_fn=self.collator(generation))

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
        return self.loader("train", shuffle=True)

    def val_dataloader(self):
        return self.eval_loaders("val") if "val" in self.records else []  # no validation data: Lightning skips it

    def test_dataloader(self):
        return self.eval_loaders("test")

    def predict_dataloader(self) -> DataLoader:
        return self.loader("predict", shuffle=False, generation=True)

    def predict_records(self) -> list:
        """The records of the predict file, in file order (batches come sorted by length; match them by id)."""
        return self.records.get("predict", [])
