"""Batches that waste little compute on padding: length-grouped batch sampling and dynamic padding."""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import torch
from torch.utils.data import BatchSampler, Dataset, Sampler


class Repeat(int):
    """The index of a sample repeated to fill a short last training batch (see :class:`LengthGroupedBatchSampler`):
    it loads as that sample, marked ``padding`` so that it trains nothing. An ``int`` to every other reader."""

    __slots__ = ()


class TokenizedDataset(Dataset):
    """Token ids of one split, stored flat (one int32 tensor plus offsets), with labels and record ids.

    Reply data adds ``target_ids``/``target_offsets`` (the reply, for sequence-to-sequence models) and
    ``prompt_lengths`` (for causal models, where the input is prompt + reply), or, in the chat format, ``loss_mask``
    (1 on the assistant tokens of a whole conversation, offsets as ``input_ids``), and per-item ``extras`` (reference
    text, context turns) that generation and evaluation read. Every item has ``padding``: True for a
    :class:`Repeat` index (a repeated sample that fills a short training batch and must not train).
    """

    def __init__(self, encoded: dict, labels: Sequence[int] | None, ids: Sequence[str],
                 extras: Sequence[dict] | None = None):
        self.encoded = encoded
        self.offsets: torch.Tensor = encoded["offsets"]
        self.labels = None if labels is None else torch.as_tensor(labels, dtype=torch.long)
        self.record_ids = list(ids)
        self.extras = list(extras) if extras is not None else None
        self.lengths = (self.offsets[1:] - self.offsets[:-1]).tolist()

    def __len__(self) -> int:
        return len(self.lengths)

    @staticmethod
    def _slice(flat: torch.Tensor, offsets: torch.Tensor, i: int) -> torch.Tensor:
        return flat[int(offsets[i]):int(offsets[i + 1])]

    def __getitem__(self, i: int) -> dict:
        enc = self.encoded
        item = {"input_ids": self._slice(enc["input_ids"], self.offsets, i), "id": self.record_ids[i],
                "padding": isinstance(i, Repeat)}
        if "token_type_ids" in enc:
            item["token_type_ids"] = self._slice(enc["token_type_ids"], self.offsets, i)
        if "loss_mask" in enc:
            item["loss_mask"] = self._slice(enc["loss_mask"], self.offsets, i)
        if "target_ids" in enc:
            item["target_ids"] = self._slice(enc["target_ids"], enc["target_offsets"], i)
        if "prompt_lengths" in enc:
            item["prompt_length"] = int(enc["prompt_lengths"][i])
        if self.labels is not None:
            item["labels"] = self.labels[i]
        if self.extras is not None:
            item.update(self.extras[i])
        return item

    def subset(self, indices: Sequence[int]) -> "TokenizedDataset":
        """A dataset of the chosen items (for generating on a bounded sample)."""
        enc = {}
        for key, offsets_key in (("input_ids", "offsets"), ("token_type_ids", "offsets"), ("loss_mask", "offsets"),
                                 ("target_ids", "target_offsets")):
            if key not in self.encoded:
                continue
            parts = [self._slice(self.encoded[key], self.encoded[offsets_key], i) for i in indices]
            enc[key] = torch.cat(parts) if parts else self.encoded[key][:0]
            lengths = torch.tensor([len(p) for p in parts], dtype=torch.long)
            enc[offsets_key] = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
        if "prompt_lengths" in self.encoded:
            enc["prompt_lengths"] = self.encoded["prompt_lengths"][list(indices)]
        labels = None if self.labels is None else self.labels[list(indices)]
        extras = None if self.extras is None else [self.extras[i] for i in indices]
        return TokenizedDataset(enc, labels, [self.record_ids[i] for i in indices], extras)


class LengthGroupedBatchSampler(BatchSampler):
    """Batches of similar length, in random order, reproducible from ``seed`` and the epoch; resumable mid-epoch.

    Shuffled runs take a random permutation, cut it into mega-batches of ``mega_batch`` batches, sort each by length
    and cut it into batches, then shuffle the batches: random enough to train well, with little padding. Evaluation
    (``shuffle=False``) sorts the whole split by length.

    Distributed: every rank builds the same global batches of ``batch_size * num_replicas`` samples (same seed and
    epoch) and takes its slice, so 2 ranks at batch B/2 see exactly the batches 1 rank sees at batch B. Training
    shares a short last global batch out in equal parts, filled up with repeated samples, so every rank takes the
    same number of steps (DDP needs that); the repeats come as :class:`Repeat` indices, which the dataset marks
    ``padding`` and the models leave out of the loss (no sample trains twice in an epoch). Evaluation never repeats
    or drops a sample: a short last batch is shared out unevenly (a rank may get one batch fewer, which evaluation
    tolerates because metrics are synchronised once, at the end).

    Lightning's distributed-sampler injection is understood rather than fought: it re-creates this class with
    ``sampler=DistributedSampler(...)``, from which only the rank and the number of ranks are read.

    ``state_dict()``/``load_state_dict()`` hold the epoch and the number of batches already trained in it, as plain
    values; after ``load_state_dict`` (or ``resume=`` a saved state, which survives Lightning re-creating the
    sampler) the next iteration over that epoch skips those batches.

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
        sampler: a distributed sampler injected by Lightning; its ``num_replicas`` and ``rank`` win.
        resume: a ``state_dict()`` to continue from.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, shuffle: bool = True, group_by_length: bool = True,
                 drop_last: bool = False, seed: int = 0, mega_batch: int = 50, num_replicas: int = 1, rank: int = 0,
                 sampler: Sampler | None = None, resume: dict | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.lengths = torch.as_tensor(list(lengths))
        self.batch_size, self.shuffle, self.group_by_length = batch_size, shuffle, group_by_length
        self.drop_last, self.seed, self.mega_batch = drop_last, seed, mega_batch
        if sampler is not None and hasattr(sampler, "num_replicas") and hasattr(sampler, "rank"):
            num_replicas, rank = sampler.num_replicas, sampler.rank
        self.num_replicas, self.rank = num_replicas, rank
        # Lightning calls set_epoch on ``batch_sampler.sampler`` (never on the batch sampler itself): relay it here
        self.sampler = _EpochRelay(self, sampler)
        self.epoch = 0
        self._resume_at: tuple[int, int] | None = None  # (epoch, batches to skip)
        if resume:
            self.load_state_dict(resume)

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

    def _rank_batches(self) -> list[list[int]]:
        out = []
        for batch in self._global_batches():
            if self.num_replicas == 1:
                out.append(batch.tolist())
            elif len(batch) == self.batch_size * self.num_replicas:
                out.append(batch[self.rank * self.batch_size:(self.rank + 1) * self.batch_size].tolist())
            elif self.shuffle:  # training: share a short batch out evenly, filled up with repeats (ranks keep in step)
                per_rank = math.ceil(len(batch) / self.num_replicas)
                padded = batch.repeat(math.ceil(per_rank * self.num_replicas / len(batch)))[: per_rank * self.num_replicas]
                start = self.rank * per_rank
                out.append([i if start + k < len(batch) else Repeat(i)
                            for k, i in enumerate(padded[start:start + per_rank].tolist())])
            else:  # evaluation: every sample exactly once; a rank left without samples gets no batch
                mine = batch[self.rank::self.num_replicas].tolist()
                if mine:
                    out.append(mine)
        return out

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._rank_batches()
        skip = 0
        if self._resume_at is not None:
            epoch, skip = self._resume_at
            self._resume_at = None
            if epoch != self.epoch or skip >= len(batches):
                skip = 0
        yield from batches[skip:]

    def __len__(self) -> int:
        if not self.shuffle and self.num_replicas > 1:
            return len(self._rank_batches())
        n, size = len(self.lengths), self.batch_size * self.num_replicas
        return n // size if self.drop_last else math.ceil(n / size)

    def state_dict(self, consumed: int) -> dict:
        """The epoch and how many of its batches were trained. ``consumed`` comes from the training loop: the
        sampler cannot count it, since loaders and the loop fetch batches ahead of training on them."""
        return {"epoch": self.epoch, "consumed": consumed, "seed": self.seed, "num_replicas": self.num_replicas,
                "mega_batch": self.mega_batch}

    def load_state_dict(self, state: dict) -> None:
        if (state.get("seed", self.seed) != self.seed or state.get("num_replicas", self.num_replicas) != self.num_replicas
                or state.get("mega_batch", 50) != self.mega_batch):  # states without it: before it could be set
            # another seed, world size or window orders the data differently: restart the epoch rather than skip
            # wrong batches
            return
        self._resume_at = (int(state["epoch"]), int(state["consumed"]))


class _EpochRelay(Sampler[int]):
    """The ``sampler`` attribute of :class:`LengthGroupedBatchSampler`: the indices of its batches in order, and a
    ``set_epoch`` that reaches the batch sampler (and an injected distributed sampler)."""

    def __init__(self, owner: LengthGroupedBatchSampler, inner: Sampler | None):
        self.owner, self.inner = owner, inner

    def set_epoch(self, epoch: int) -> None:
        self.owner.set_epoch(epoch)
        if callable(getattr(self.inner, "set_epoch", None)):
            self.inner.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        return (i for batch in self.owner._rank_batches() for i in batch)

    def __len__(self) -> int:
        return sum(len(batch) for batch in self.owner._rank_batches())


def padded_length(longest: int, multiple: int | Sequence[int] | None) -> int:
    """The length a batch whose longest row is ``longest`` is padded to: exact (None), rounded up to a multiple
    (an int), or the smallest length bucket that holds it (a list: a fixed set of shapes, so ``torch.compile`` does
    not recompile per batch; rows longer than the largest bucket are padded exactly)."""
    if not multiple:
        return longest
    if isinstance(multiple, int):
        return math.ceil(longest / multiple) * multiple
    return next((b for b in sorted(multiple) if b >= longest), longest)


def pad(rows: Sequence[torch.Tensor], value: int, multiple: int | Sequence[int] | None = None, left: bool = False):
    """Stack 1-D tensors into a 2-D batch padded with ``value`` (on the left for decoder-only generation), and the
    matching attention mask; ``multiple`` as in :func:`padded_length`."""
    longest = padded_length(max((len(r) for r in rows), default=0), multiple)
    out = torch.full((len(rows), longest), value, dtype=torch.long)
    mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for i, row in enumerate(rows):
        n = len(row)
        if n:
            sl = slice(longest - n, longest) if left else slice(0, n)
            out[i, sl] = row
            mask[i, sl] = 1
    return out, mask


def _padding(samples: list[dict]) -> torch.Tensor:
    """Which rows repeat a sample only to fill a short training batch (True: no loss, no gradient)."""
    return torch.tensor([bool(s.get("padding", False)) for s in samples], dtype=torch.bool)


class PadCollator:
    """Pads a list of samples to the longest one (rounded up to ``pad_to_multiple_of``) and builds the mask.

    Args:
        pad_token_id: id used for padding.
        pad_to_multiple_of: round the padded length up to a multiple of this (8 suits tensor cores), or a list of
            length buckets (see :func:`padded_length`); None: exact.
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        self.pad_token_id, self.pad_to_multiple_of = pad_token_id, pad_to_multiple_of

    def __call__(self, samples: list[dict]) -> dict:
        input_ids, attention_mask = pad([s["input_ids"] for s in samples], self.pad_token_id, self.pad_to_multiple_of)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "ids": [s["id"] for s in samples],
                 "padding": _padding(samples)}
        if "token_type_ids" in samples[0]:
            batch["token_type_ids"] = pad([s["token_type_ids"] for s in samples], 0, self.pad_to_multiple_of)[0]
        if "labels" in samples[0]:
            batch["labels"] = torch.stack([s["labels"] for s in samples])
        return batch


class ReplyCollator:
    """Batches of reply examples, for training (loss on the reply tokens only) or for generation.

    Causal models train on ``prompt + reply`` with the prompt's labels set to -100, and generate from the prompt
    alone, padded on the left; in the chat format they train on whole conversations, labelled where ``loss_mask``
    is 1 (the assistant turns). Sequence-to-sequence models read the context and learn the reply as labels.

    Args:
        pad_token_id: id used for padding.
        kind: ``causal`` or ``seq2seq``.
        generation: batch prompts for ``generate`` (with references and contexts) instead of training pairs.
        pad_to_multiple_of: round padded lengths up to a multiple of this.
    """

    IGNORE = -100

    def __init__(self, pad_token_id: int, kind: str, generation: bool = False, pad_to_multiple_of: int | None = None):
        self.pad_token_id, self.kind, self.generation = pad_token_id, kind, generation
        self.multiple = pad_to_multiple_of

    def __call__(self, samples: list[dict]) -> dict:
        batch = {"ids": [s["id"] for s in samples]}
        causal = self.kind == "causal"
        if self.generation:
            prompts = [s["input_ids"][: s["prompt_length"]] if causal else s["input_ids"] for s in samples]
            batch["input_ids"], batch["attention_mask"] = pad(prompts, self.pad_token_id, self.multiple, left=causal)
            for key in ("reference", "context", "intent"):
                if key in samples[0]:
                    batch[key + "s"] = [s[key] for s in samples]
            return batch
        batch["input_ids"], batch["attention_mask"] = pad([s["input_ids"] for s in samples], self.pad_token_id,
                                                          self.multiple)
        if "loss_mask" in samples[0]:  # chat format: every assistant turn of the conversation
            mask = pad([s["loss_mask"] for s in samples], 0, self.multiple)[0]
            labels = batch["input_ids"].masked_fill(mask == 0, self.IGNORE)
        elif causal:
            labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, self.IGNORE)
            for i, s in enumerate(samples):
                labels[i, : s["prompt_length"]] = self.IGNORE
        else:
            labels, mask = pad([s["target_ids"] for s in samples], self.pad_token_id, self.multiple)
            labels = labels.masked_fill(mask == 0, self.IGNORE)
        batch["labels"] = labels
        batch["padding"] = _padding(samples)
        return batch
