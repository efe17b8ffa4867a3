"""Batches that waste little compute on padding: length-grouped batch sampling and dynamic padding."""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import torch
from torch.utils.data import Dataset, Sampler


class TokenizedDataset(Dataset):
    """Token ids of one split, stored flat (one int32 tensor plus offsets), with labels and record ids."""

    def __init__(self, encoded: dict, labels: Sequence[int] | None, ids: Sequence[str]):
        self.ids_flat: torch.Tensor = encoded["input_ids"]
        self.offsets: torch.Tensor = encoded["offsets"]
        self.types_flat: torch.Tensor | None = encoded.get("token_type_ids")
        self.labels = None if labels is None else torch.as_tensor(labels, dtype=torch.long)
        self.record_ids = list(ids)
        self.lengths = (self.offsets[1:] - self.offsets[:-1]).tolist()

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> dict:
        start, end = int(self.offsets[i]), int(self.offsets[i + 1])
        item = {"input_ids": self.ids_flat[start:end], "id": self.record_ids[i]}
        if self.types_flat is not None:
            item["token_type_ids"] = self.types_flat[start:end]
        if self.labels is not None:
            item["labels"] = self.labels[i]
        return item


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Batches of similar length, in random order, reproducible from ``seed`` and the epoch.

    Shuffled runs take a random permutation, cut it into mega-batches of ``mega_batch`` batches, sort each by length
    and cut it into batches, then shuffle the batches: random enough to train well, with little padding. Evaluation
    (``shuffle=False``) sorts the whole split by length. With ``num_replicas > 1`` each global batch of
    ``batch_size * num_replicas`` samples is shared out between the ranks, so every rank steps in lock-step over
    batches of similar length.

    Args:
        lengths: token count of each sample.
        batch_size: samples per batch on one rank.
        shuffle: random order (training) or fixed order (evaluation).
        group_by_length: group similar lengths; ``False`` gives plain random (or sequential) batches.
        drop_last: drop a last incomplete global batch.
        seed: base seed; the epoch is added to it.
        mega_batch: batches per sorted mega-batch.
        num_replicas: number of ranks sharing the data.
        rank: this rank.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, shuffle: bool = True, group_by_length: bool = True,
                 drop_last: bool = False, seed: int = 0, mega_batch: int = 50, num_replicas: int = 1, rank: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.lengths = torch.as_tensor(list(lengths))
        self.batch_size, self.shuffle, self.group_by_length = batch_size, shuffle, group_by_length
        self.drop_last, self.seed, self.mega_batch = drop_last, seed, mega_batch
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _global_batches(self) -> list[torch.Tensor]:
        n, size = len(self.lengths), self.batch_size * self.num_replicas
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        if self.shuffle:
            order = torch.randperm(n, generator=gen)
            if self.group_by_length:
                chunk = size * self.mega_batch
                order = torch.cat([c[torch.argsort(self.lengths[c], descending=True, stable=True)]
                                   for c in order.split(chunk)]) if n else order
        else:
            order = torch.argsort(self.lengths, descending=True, stable=True) if self.group_by_length else torch.arange(n)
        batches = list(order.split(size))
        if batches and len(batches[-1]) < size and self.drop_last:
            batches.pop()
        if self.shuffle and batches:
            perm = torch.randperm(len(batches), generator=gen).tolist()
            batches = [batches[i] for i in perm]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self._global_batches():
            if self.num_replicas == 1:
                yield batch.tolist()
                continue
            if len(batch) < self.batch_size * self.num_replicas:  # short last batch: share it out evenly
                per_rank = math.ceil(len(batch) / self.num_replicas)
                padded = batch.repeat(math.ceil(per_rank * self.num_replicas / len(batch)))[: per_rank * self.num_replicas]
                yield padded[self.rank * per_rank:(self.rank + 1) * per_rank].tolist()
            else:
                yield batch[self.rank * self.batch_size:(self.rank + 1) * self.batch_size].tolist()

    def __len__(self) -> int:
        n, size = len(self.lengths), self.batch_size * self.num_replicas
        return n // size if self.drop_last else math.ceil(n / size)


class PadCollator:
    """Pads a list of samples to the longest one (rounded up to ``pad_to_multiple_of``) and builds the mask.

    Args:
        pad_token_id: id used for padding.
        pad_to_multiple_of: round the padded length up to a multiple of this (8 suits tensor cores); None: exact.
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        self.pad_token_id, self.pad_to_multiple_of = pad_token_id, pad_to_multiple_of

    def __call__(self, samples: list[dict]) -> dict:
        longest = max(len(s["input_ids"]) for s in samples)
        if self.pad_to_multiple_of:
            longest = math.ceil(longest / self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(samples), longest), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(samples), longest), dtype=torch.long)
        has_types = "token_type_ids" in samples[0]
        token_type_ids = torch.zeros((len(samples), longest), dtype=torch.long) if has_types else None
        for row, sample in enumerate(samples):
            n = len(sample["input_ids"])
            input_ids[row, :n] = sample["input_ids"]
            attention_mask[row, :n] = 1
            if has_types:
                token_type_ids[row, :n] = sample["token_type_ids"]
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "ids": [s["id"] for s in samples]}
        if has_types:
            batch["token_type_ids"] = token_type_ids
        if "labels" in samples[0]:
            batch["labels"] = torch.stack([s["labels"] for s in samples])
        return batch
