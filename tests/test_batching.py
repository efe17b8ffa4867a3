"""Length-grouped batches, dynamic padding and the token cache."""

import torch

from conftest import tiny_intent_files
from cs_lightning.data import IntentDataModule
from cs_lightning.data.batching import LengthGroupedBatchSampler, PadCollator
from cs_lightning.data.base import stratified_split
from cs_lightning.data.encoding import cached_encode, encode_records
from cs_lightning.data.schema import IntentRecord, Turn

LENGTHS = [((i * 37) % 23) + 1 for i in range(103)]


def test_every_sample_once_per_epoch_and_reproducible():
    sampler = LengthGroupedBatchSampler(LENGTHS, batch_size=8, seed=3, mega_batch=4)
    epoch0 = list(sampler)
    assert sorted(i for b in epoch0 for i in b) == list(range(103))
    assert len(epoch0) == len(sampler) == 13
    assert list(sampler) == epoch0
    sampler.set_epoch(1)
    assert list(sampler) != epoch0


def test_grouping_cuts_padding():
    def padding(batches):
        return sum(max(LENGTHS[i] for i in b) * len(b) - sum(LENGTHS[i] for i in b) for b in batches)

    grouped = list(LengthGroupedBatchSampler(LENGTHS, 8, seed=0, mega_batch=50))
    plain = list(LengthGroupedBatchSampler(LENGTHS, 8, seed=0, group_by_length=False))
    assert padding(grouped) < padding(plain) / 3


def test_a_wider_sort_window_pads_less_and_a_resume_with_another_window_restarts_the_epoch():
    lengths = [((i * 7919) % 61) + 3 for i in range(2000)]

    def padded(mega_batch):
        batches = list(LengthGroupedBatchSampler(lengths, 16, seed=1, mega_batch=mega_batch))
        assert sorted(i for b in batches for i in b) == list(range(2000))
        return sum(max(lengths[i] for i in b) * len(b) for b in batches)

    assert padded(125) < padded(25) < padded(5)
    state = LengthGroupedBatchSampler(lengths, 16, seed=1, mega_batch=25).state_dict(consumed=10)
    other = LengthGroupedBatchSampler(lengths, 16, seed=1, mega_batch=125, resume=state)
    assert len(list(other)) == 125  # its batches differ: the epoch starts again rather than skipping wrong ones
    old = {k: v for k, v in state.items() if k != "mega_batch"}  # a checkpoint from before the setting: 50
    assert len(list(LengthGroupedBatchSampler(lengths, 16, seed=1, resume=old))) == 125 - 10


def test_eval_order_is_sorted_and_complete():
    batches = list(LengthGroupedBatchSampler(LENGTHS, 10, shuffle=False))
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(103))
    assert [LENGTHS[i] for i in flat] == sorted(LENGTHS, reverse=True)


def test_ranks_share_global_batches():
    ranks = [list(LengthGroupedBatchSampler(LENGTHS, 5, seed=1, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1])
    covered = {i for batches in ranks for b in batches for i in b}
    assert covered == set(range(103))
    for b0, b1 in zip(*ranks):
        assert len(b0) == len(b1) and not set(b0) & set(b1) or len(b0) < 5


def test_collator_pads_dynamically():
    collate = PadCollator(pad_token_id=0, pad_to_multiple_of=8)
    batch = collate([{"input_ids": torch.tensor([5, 6, 7]), "id": "a", "labels": torch.tensor(1)},
                     {"input_ids": torch.tensor([5]), "id": "b", "labels": torch.tensor(0)}])
    assert batch["input_ids"].shape == (2, 8)
    assert batch["attention_mask"].sum(1).tolist() == [3, 1]
    assert batch["ids"] == ["a", "b"] and batch["labels"].tolist() == [1, 0]


def test_history_is_truncated_from_the_oldest_turn(tmp_path):
    dm = IntentDataModule(train_file=str(tiny_intent_files(tmp_path)["train"]), backbone="bert")
    tok = dm.tokenizer
    old = " ".join(["refund"] * 30)
    rec = IntentRecord("x", "where is my parcel", "delivery",
                       (Turn("user", old), Turn("agent", "which order"), Turn("user", "the lost one")))
    ids = encode_records(tok, [rec], max_length=16, max_history_turns=4)
    tokens = tok.convert_ids_to_tokens(ids["input_ids"].tolist())
    assert len(tokens) == 16
    text = tok.convert_tokens_to_string(tokens)
    assert "where is my parcel" in text and text.rstrip().endswith("the lost one [SEP]")  # newest turns kept
    assert "token_type_ids" in ids
    alone = encode_records(tok, [IntentRecord("y", " ".join(["parcel"] * 40), "delivery", rec.history)], 16, 4)
    assert len(alone["input_ids"]) == 16  # a message longer than the window keeps the message, never crashes


def test_token_cache_is_reused(tmp_path, monkeypatch):
    dm = IntentDataModule(train_file=str(tiny_intent_files(tmp_path)["train"]), backbone="bert")
    records = dm.records["train"]
    first = cached_encode(dm.tokenizer, records, 32, 4)
    import cs_lightning.data.encoding as encoding

    monkeypatch.setattr(encoding, "encode_records", lambda *a, **k: (_ for _ in ()).throw(AssertionError("re-encoded")))
    second = cached_encode(dm.tokenizer, records, 32, 4)
    assert torch.equal(first["input_ids"], second["input_ids"])


def test_stratified_split_is_reproducible_and_keeps_every_label():
    records = [IntentRecord(str(i), f"t{i}", "ab"[i % 2] if i < 40 else "c") for i in range(41)]
    keep, carved = stratified_split(records, 0.1, seed=1)
    assert len(keep) + len(carved) == 41
    assert {r.label for r in carved} == {"a", "b"}  # 'c' has one example and stays in train
    assert [r.id for r in stratified_split(records, 0.1, seed=1)[1]] == [r.id for r in carved]


def test_lightning_reaches_set_epoch_through_the_sampler_attribute():
    """Lightning calls set_epoch on ``batch_sampler.sampler``; without the relay every epoch had the same order."""
    from lightning.fabric.utilities.data import _set_sampler_epoch
    from torch.utils.data import DataLoader

    sampler = LengthGroupedBatchSampler(LENGTHS, batch_size=8, seed=3)
    loader = DataLoader(list(range(103)), batch_sampler=sampler)
    first = list(sampler)
    _set_sampler_epoch(loader, 1)
    assert sampler.epoch == 1 and list(sampler) != first


def test_evaluation_on_two_ranks_sees_every_sample_exactly_once():
    ranks = [list(LengthGroupedBatchSampler(LENGTHS, 8, shuffle=False, num_replicas=2, rank=r)) for r in (0, 1)]
    seen = sorted(i for batches in ranks for b in batches for i in b)
    assert seen == list(range(103))  # 103 is odd: no sample repeated to even the ranks out
    for r, batches in enumerate(ranks):
        assert len(batches) == len(LengthGroupedBatchSampler(LENGTHS, 8, shuffle=False, num_replicas=2, rank=r))


def test_training_ranks_take_equal_steps_and_injected_sampler_sets_the_rank():
    from torch.utils.data import DistributedSampler

    injected = [DistributedSampler(range(103), num_replicas=2, rank=r, shuffle=False) for r in (0, 1)]
    ranks = [list(LengthGroupedBatchSampler(LENGTHS, 8, seed=1, sampler=s)) for s in injected]
    assert len(ranks[0]) == len(ranks[1]) == 7
    one_rank = list(LengthGroupedBatchSampler(LENGTHS, 16, seed=1))
    for step in range(6):  # full global batches: the two halves are exactly one rank's batch of 16
        assert sorted(ranks[0][step] + ranks[1][step]) == sorted(one_rank[step])


def test_sampler_state_resumes_mid_epoch_and_survives_recreation():
    sampler = LengthGroupedBatchSampler(LENGTHS, 8, seed=5)
    sampler.set_epoch(2)
    full = list(sampler)
    state = sampler.state_dict(consumed=4)
    assert state == {"epoch": 2, "consumed": 4, "seed": 5, "num_replicas": 1, "mega_batch": 50}
    again = LengthGroupedBatchSampler(LENGTHS, 8, seed=5, resume=state)  # what Lightning's re-creation keeps
    again.set_epoch(2)
    assert list(again) == full[4:]
    assert list(again) == full  # only the interrupted epoch is shortened
    other_epoch = LengthGroupedBatchSampler(LENGTHS, 8, seed=5, resume=state)
    other_epoch.set_epoch(3)
    assert len(list(other_epoch)) == len(full)


def test_padding_rules_exact_multiple_and_buckets():
    from cs_lightning.data.batching import padded_length

    assert [padded_length(n, None) for n in (5, 17)] == [5, 17]
    assert [padded_length(n, 8) for n in (5, 8, 17)] == [8, 8, 24]
    assert [padded_length(n, [16, 32, 64]) for n in (5, 16, 17, 64, 70)] == [16, 16, 32, 64, 70]
    collate = PadCollator(pad_token_id=0, pad_to_multiple_of=[8, 16])
    batch = collate([{"input_ids": torch.ones(9, dtype=torch.long), "id": "a", "labels": torch.tensor(0)}])
    assert batch["input_ids"].shape == (1, 16) and int(batch["attention_mask"].sum()) == 9
