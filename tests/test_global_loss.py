"""Training losses normalised over the whole global batch (issue 15): on one rank they are the ordinary means
(cross_entropy's with class weights, label smoothing and out-of-scope examples; the Hugging Face reply-token mean);
samples repeated to fill a short last batch train nothing, and no sample trains twice in an epoch on several ranks.
The 2-rank runs themselves are in test_distributed.py."""

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_intent_files
from cs_lightning.data import DialogueDataModule, IntentDataModule
from cs_lightning.data.batching import LengthGroupedBatchSampler, PadCollator, ReplyCollator, Repeat
from cs_lightning.models import IntentClassifier, ReplyGenerator
from test_reply import dialogue_file

LENGTHS = [((i * 37) % 23) + 1 for i in range(103)]
# training_step called outside a Trainer: its self.log only warns
pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")


@pytest.mark.parametrize("world, batch_size", [(2, 8), (3, 5), (4, 26)])
def test_no_sample_trains_twice_in_an_epoch_on_several_ranks(world, batch_size):
    ranks = [list(LengthGroupedBatchSampler(LENGTHS, batch_size, seed=4, num_replicas=world, rank=r))
             for r in range(world)]
    for step in zip(*ranks, strict=True):  # every rank takes as many steps, of as many rows
        assert len({len(b) for b in step}) == 1
    trained = [i for batches in ranks for b in batches for i in b if not isinstance(i, Repeat)]
    assert sorted(trained) == list(range(103))  # 103 samples: one global batch is short, filled up with repeats
    assert any(isinstance(i, Repeat) for batches in ranks for b in batches for i in b)


def test_a_repeat_loads_as_a_padding_row(tmp_path):
    dataset = IntentDataModule(train_file=str(tiny_intent_files(tmp_path)["train"]), backbone="bert").encode("train")
    items = [dataset[Repeat(2)], dataset[2]]
    assert [it["padding"] for it in items] == [True, False]
    assert torch.equal(items[0]["input_ids"], items[1]["input_ids"]) and items[0]["id"] == items[1]["id"]
    assert PadCollator(0)(items)["padding"].tolist() == [True, False]


def _intent_model(tmp_path, **kwargs):
    dm = IntentDataModule(train_file=str(tiny_intent_files(tmp_path)["train"]), backbone="bert", batch_size=6,
                          seed=1)
    dm.setup("fit")
    model = IntentClassifier(backbone="bert", pretrained=False, model_size="tiny", labels=dm.label_names,
                             label_counts=dm.label_counts, tokenizer_path=dm.tokenizer_path, **kwargs)
    return dm, model.eval()  # no dropout: the same forward twice


def test_intent_loss_is_cross_entropys_mean_with_class_weights_smoothing_and_no_class(tmp_path):
    dm, model = _intent_model(tmp_path, class_weights=True, label_smoothing=0.2, oos_label="oos")
    model.loss_weights = torch.tensor([0.5, 1.0, 2.5])  # clearly unequal weights
    batch = next(iter(dm.train_dataloader()))
    batch["labels"][1] = len(dm.label_names)  # an out-of-scope example without a class of its own: no loss
    logits = model(**model.model_inputs(batch))
    expected = F.cross_entropy(logits, batch["labels"].masked_fill(batch["labels"] >= 3, -100), ignore_index=-100,
                               weight=model.loss_weights, label_smoothing=0.2)
    loss = model.training_step(batch, 0)
    assert torch.allclose(loss, expected, rtol=1e-6, atol=0)


def _grads(model, batch):
    model.zero_grad()
    loss = model.training_step(batch, 0)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _with_a_repeat(collate, dataset, index):
    """The batch plus a repeat of sample ``index``, as a short last batch is filled up."""
    return collate([dataset[i] for i in index] + [dataset[Repeat(index[0])]])


def test_a_repeated_sample_changes_neither_the_intent_loss_nor_the_gradient(tmp_path):
    dm, model = _intent_model(tmp_path, class_weights=True)
    dataset, collate = dm.datasets["train"], dm.collator(False)
    plain, padded = collate([dataset[i] for i in (0, 3, 7)]), _with_a_repeat(collate, dataset, [0, 3, 7])
    assert padded["padding"].tolist() == [False, False, False, True]
    (loss_a, grads_a), (loss_b, grads_b) = _grads(model, plain), _grads(model, padded)
    assert torch.allclose(loss_a, loss_b, rtol=1e-6)
    assert all(torch.allclose(grads_a[n], grads_b[n], rtol=1e-5, atol=1e-6) for n in grads_a)


@pytest.mark.parametrize("backbone", ["gpt", "t5"])
def test_reply_loss_is_the_token_mean_and_ignores_repeats(tmp_path, backbone):
    dm = DialogueDataModule(train_file=str(dialogue_file(tmp_path)), val_fraction=0, backbone=backbone,
                            tokenizer_vocab_size=300)
    dm.setup("fit")
    model = ReplyGenerator(backbone=backbone, pretrained=False, model_size="tiny", tokenizer_path=dm.tokenizer_path)
    model.eval()
    dataset, collate = dm.datasets["train"], dm.collator(False)
    assert isinstance(collate, ReplyCollator)
    plain = collate([dataset[i] for i in range(len(dataset))])
    expected = model(plain["input_ids"], plain["attention_mask"], plain["labels"]).loss  # Hugging Face's own mean
    loss_a, grads_a = _grads(model, plain)
    assert torch.allclose(loss_a, expected, rtol=1e-6)
    loss_b, grads_b = _grads(model, _with_a_repeat(collate, dataset, list(range(len(dataset)))))
    assert torch.allclose(loss_a, loss_b, rtol=1e-6)
    assert all(torch.allclose(grads_a[n], grads_b[n], rtol=1e-5, atol=1e-6) for n in grads_a)


def test_a_batch_with_nothing_to_learn_has_a_zero_loss_and_gradient(tmp_path):
    dm, model = _intent_model(tmp_path)
    dataset, collate = dm.datasets["train"], dm.collator(False)
    loss, grads = _grads(model, collate([dataset[Repeat(0)], dataset[Repeat(1)]]))  # a rank left with repeats only
    assert float(loss) == 0 and all(float(g.abs().max()) == 0 for g in grads.values())


TWO_RANKS = """
import sys, torch, torch.distributed as dist
from cs_lightning.distributed import global_mean
rank, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
results = []
# (sum of losses, count) per rank: uneven counts, then a rank with nothing to learn from
for total, count in [((3.0, 1.0), (2, 6)), ((4.0, 0.0), (5, 0))]:
    x = torch.tensor(1.0, requires_grad=True)
    loss, mean = global_mean(total[rank] * x, torch.tensor(count[rank]))
    loss.backward()
    results.append([float(loss), float(mean), float(x.grad)])
torch.save(results, f"{out}.{rank}")
dist.destroy_process_group()
"""


def test_global_mean_over_two_ranks_is_the_mean_of_the_whole_global_batch(tmp_path):
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "out")
    ranks = [subprocess.Popen([sys.executable, "-c", TWO_RANKS, str(r), str(port), out]) for r in (0, 1)]
    assert [p.wait(timeout=120) for p in ranks] == [0, 0]
    rank0, rank1 = (torch.load(f"{out}.{r}") for r in (0, 1))
    # each rank backpropagates its sum * 2 / the global count: DDP's average of the ranks' gradients is then the
    # gradient of the global mean; the mean logged is the global one, the same on both ranks
    assert rank0[0] == pytest.approx([3 * 2 / 8, 4 / 8, 3 * 2 / 8]) and rank1[0] == pytest.approx([2 / 8, 4 / 8, 2 / 8])
    assert rank0[1] == pytest.approx([4 * 2 / 5, 4 / 5, 4 * 2 / 5]) and rank1[1] == pytest.approx([0, 4 / 5, 0])
