"""Adapters (``model.peft``, through peft): LoRA, DoRA and (IA)³ train only the adapters and the head on intent and
reply backbones; checkpoints hold what trains and refuse other base weights; ``--ckpt_path last`` continues exactly;
exports (merged, and ``--adapter``) predict what the checkpoint predicts; wrong settings and adapters with a freezing
callback are one line."""

import json
import sys
from pathlib import Path

import pytest
import torch

from conftest import tiny_intent_files, write
from cs_lightning.backbones.bert import BertBackbone
from cs_lightning.callbacks import FreezeLayers, GradualUnfreezing
from cs_lightning.checkpoints import load_module
from cs_lightning.commands.export import main as cs_export
from cs_lightning.commands.train import main
from cs_lightning.errors import ConfigError
from cs_lightning.models import IntentClassifier, ReplyGenerator
from cs_lightning.models.adapters import METHODS
from cs_lightning.prompts import SPECIAL_MARKERS, Turn

TEXTS = ["where is my parcel", "forgot my password", "refund please", "my parcel is lost", "reset password"]
LABELS = ["delivery", "login", "refund"]
NO_DROPOUT = "--model.config_overrides={hidden_dropout_prob: 0.0, attention_probs_dropout_prob: 0.0}"
LORA = "--model.peft={method: lora, r: 4, alpha: 8, dropout: 0.0}"
ADAPTED = ("lora_", "ia3_", "modules_to_save", "trainable_tokens")  # what peft adds and trains


@pytest.fixture(scope="session")
def shared(tmp_path_factory) -> Path:
    """Training files, a cache, and two tiny BERT "hub" folders (weights + tokenizer, as ``save_pretrained`` writes
    them) with different weights: ``base`` that adapters train on, and ``other``."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from cs_lightning.tokenization import train_tokenizer

    folder = tmp_path_factory.mktemp("adapters")
    files = tiny_intent_files(folder / "data")
    lines = [json.dumps({"id": f"d{i}", "domain": "shop", "turns": [{"role": "user", "text": ask},
                                                                     {"role": "agent", "text": answer}]})
             for i, (ask, answer) in enumerate([("where is my parcel", "it arrives tomorrow"),
                                                ("i want a refund", "your refund is on its way")] * 4)]
    write(folder / "data" / "dialogues.jsonl", "\n".join(lines) + "\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CS_LIGHTNING_CACHE", str(folder / "cache"))
        texts = [line.split(",")[0] for line in files["train"].read_text().splitlines()[1:]]
        tokenizer = AutoTokenizer.from_pretrained(str(train_tokenizer(texts, "wordpiece", 300)))
    for name, seed in (("base", 1), ("other", 2)):
        torch.manual_seed(seed)
        config = BertConfig(**BertBackbone.sizes["tiny"], vocab_size=len(tokenizer),
                            pad_token_id=tokenizer.pad_token_id)
        BertModel(config).save_pretrained(str(folder / name))
        tokenizer.save_pretrained(str(folder / name))
    return folder


def fit_args(shared: Path, experiment: str, *extra: str) -> list[str]:
    """A tiny BERT intent model on the ``base`` folder's weights, LoRA r=4, no dropout (exact resume)."""
    data = shared / "data"
    return ["--model", "cs_lightning.models.IntentClassifier", "--model.backbone=bert",
            f"--model.model_name_or_path={shared / 'base'}", "--model.learning_rate=0.01", NO_DROPOUT, LORA,
            "--data", "cs_lightning.data.IntentDataModule", f"--data.train_file={data / 'train.csv'}",
            f"--data.val_file={data / 'val.csv'}", "--data.batch_size=4", "--seed_everything=7",
            "--trainer.max_epochs=2", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
            "--trainer.log_every_n_steps=1", f"--experiment={experiment}", *extra]


@pytest.fixture(scope="session")
def straight(shared) -> Path:
    """``last.ckpt`` of two LoRA epochs straight through (18 examples, batch 4: 5 steps an epoch)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(shared)
        mp.setattr(sys, "argv", ["cs-train"])
        mp.setenv("CS_LIGHTNING_CACHE", str(shared / "cache"))
        main(["fit", *fit_args(shared, "straight")])
    return shared / "logs" / "straight" / "checkpoints" / "last.ckpt"


def logits(module, texts=TEXTS) -> torch.Tensor:
    enc = module.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return module.eval()(**{k: v for k, v in enc.items() if k in module.tokenizer.model_input_names})


# ------------------------------------------------------------------------------------------------ every method
FAMILIES = {"bert": ("bert", None, "wordpiece"), "roberta": ("auto", "roberta", "bpe-roberta"),
            "qwen2": ("auto", "qwen2", "bpe"), "gpt2": ("gpt", None, "bpe"), "t5": ("t5", None, "unigram")}
CASES = ([(method, "intent", family) for method in METHODS for family in ("bert", "roberta", "qwen2")]
         + [(method, "reply", family) for method in METHODS for family in ("gpt2", "t5")])


def build(shared: Path, task: str, family: str, peft: dict, **kwargs):
    """A tiny model of ``family`` built from scratch with a tokenizer trained on the test texts (cached)."""
    from transformers import AutoTokenizer

    from cs_lightning.tokenization import add_marker_tokens, train_tokenizer

    backbone, model_type, kind = FAMILIES[family]
    tokenizer = str(train_tokenizer(TEXTS * 2, kind, 300, cache_dir=shared / "cache" / "tokenizers"))
    if task == "reply":
        tokenizer = add_marker_tokens(tokenizer, list(SPECIAL_MARKERS.values()), AutoTokenizer.from_pretrained)
        return ReplyGenerator(backbone=backbone, model_type=model_type, pretrained=False, model_size="tiny",
                              tokenizer_path=tokenizer, peft=peft, **kwargs)
    return IntentClassifier(backbone=backbone, model_type=model_type, pretrained=False, model_size="tiny",
                            tokenizer_path=tokenizer, labels=LABELS, peft=peft, **kwargs)


def loss_of(module, task: str) -> torch.Tensor:
    if task == "intent":
        enc = module.tokenizer(TEXTS[:3], padding=True, return_tensors="pt")
        inputs = {k: v for k, v in enc.items() if k in module.tokenizer.model_input_names}
        return module._loss(module(**inputs), torch.tensor([0, 1, 2]))
    markers = list(SPECIAL_MARKERS.values())
    enc = module.tokenizer([f"{markers[0]} {t}{markers[1]} ok" for t in TEXTS[:2]], padding=True, return_tensors="pt")
    return module(enc["input_ids"], enc["attention_mask"], enc["input_ids"].masked_fill(enc["attention_mask"] == 0,
                                                                                         -100)).loss


@pytest.mark.parametrize("method, task, family", CASES, ids=lambda v: str(v))
def test_each_method_trains_the_adapters_and_head_and_nothing_else(method, task, family, shared, monkeypatch):
    monkeypatch.setenv("CS_LIGHTNING_CACHE", str(shared / "cache"))
    module = build(shared, task, family, {"method": method})
    assert module.adapter_method == method
    named = dict(module.named_parameters())
    trainable = {n for n, p in named.items() if p.requires_grad}
    assert trainable and all(any(part in n for part in ADAPTED) for n in trainable)
    assert any(("lora_" if method != "ia3" else "ia3_") in n for n in trainable)
    if task == "intent":  # the head trains in full
        assert any("modules_to_save" in n for n in trainable)
    elif method != "ia3":  # the speaker markers' embedding rows train (LoRA, DoRA)
        assert any("trainable_tokens" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in named.items()}
    optimizer = torch.optim.AdamW([named[n] for n in sorted(trainable)], lr=0.01)
    module.train()
    for _ in range(2):  # LoRA's B starts at zero: A gets a gradient from the second step on
        optimizer.zero_grad()
        loss = loss_of(module, task)
        assert torch.isfinite(loss)
        loss.backward()
        optimizer.step()
    changed = {n for n, p in named.items() if not torch.equal(p, before[n])}
    assert changed == trainable
    # what the merged export holds (peft's merge_and_unload) computes what the adapters compute
    module.eval()
    enc = module.tokenizer(TEXTS[:2], padding=True, return_tensors="pt")
    inputs = {k: v for k, v in enc.items() if k in module.tokenizer.model_input_names}
    if task == "reply" and family == "t5":
        inputs["decoder_input_ids"] = enc["input_ids"]
    with torch.no_grad():
        adapted = module.model(**inputs).logits
        merged = module.model.merge_and_unload()(**inputs).logits
    assert torch.allclose(adapted, merged, atol=1e-5)


# ------------------------------------------------------------------------------------------------ checkpoints
def test_checkpoint_holds_what_trains_and_where_the_base_comes_from(straight, shared):
    raw = torch.load(straight, map_location="cpu", weights_only=True)
    module, _ = load_module(straight)
    model_keys = {k for k in raw["state_dict"] if k.startswith("model.")}
    trainable = {f"model.{n}" for n, p in module.model.named_parameters() if p.requires_grad}
    assert model_keys == trainable and all(any(part in k for part in ADAPTED) for k in model_keys)
    assert sum(len(g["params"]) for g in raw["optimizer_states"][0]["param_groups"]) == len(trainable)
    saved = sum(v.numel() for k, v in raw["state_dict"].items() if k in model_keys)
    frozen = sum(p.numel() for p in module.model.parameters() if not p.requires_grad)
    assert saved < frozen / 4
    record = raw["cs_lightning"]["adapters"]
    assert record["method"] == "lora"
    assert record["base"]["model_name_or_path"] == str(shared / "base") and record["base"]["pretrained"] is True
    assert len(record["base"]["sha256"]) == 64
    # the rebuilt module: base weights from the folder, the trained adapters and head from the checkpoint
    state = module.state_dict()
    assert all(torch.equal(state[k], raw["state_dict"][k]) for k in model_keys)
    from transformers import BertModel

    source = BertModel.from_pretrained(str(shared / "base")).state_dict()
    base = module.model.get_base_model().bert
    assert torch.equal(base.encoder.layer[0].attention.self.query.base_layer.weight,
                       source["encoder.layer.0.attention.self.query.weight"])


def test_a_changed_base_is_refused_in_one_line(straight, shared, tmp_path, capsys):
    with pytest.raises(ConfigError) as err:
        IntentClassifier.load_from_checkpoint(straight, map_location="cpu", weights_only=True,
                                              model_name_or_path=str(shared / "other"))
    assert str(err.value).startswith("model.model_name_or_path: the base weights differ from those the adapters "
                                     "were trained on")
    assert str(shared / "base") in str(err.value)
    # the same through a program: the checkpoint now names other weights (as if its base folder had changed)
    copied = tmp_path / "ckpts"
    copied.mkdir()
    raw = torch.load(straight, map_location="cpu", weights_only=True)
    raw["hyper_parameters"]["model_name_or_path"] = str(shared / "other")
    torch.save(raw, copied / "last.ckpt")
    (copied / "tokenizer").symlink_to(straight.parent / "tokenizer")
    with pytest.raises(SystemExit) as exit_:
        cs_export([str(copied / "last.ckpt"), str(tmp_path / "out")])
    err_lines = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert exit_.value.code == 2 and len(err_lines) == 1 and "base weights differ" in err_lines[0]


def test_resume_from_last_continues_exactly(straight, shared, tmp_path, monkeypatch):
    """Two epochs straight vs a stop after step 3 of 10 (SIGTERM, as a pre-empted job) and ``--ckpt_path last``."""
    monkeypatch.setenv("CS_LIGHTNING_CACHE", str(shared / "cache"))  # the same trained tokenizer
    stop = ["--trainer.callbacks+=run_helpers.SignalAt", "--trainer.callbacks.step=3"]
    with pytest.raises(SystemExit):
        main(["fit", *fit_args(shared, "resumed", *stop)])
    stopped = torch.load("logs/resumed/checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert stopped["global_step"] == 3
    main(["fit", *fit_args(shared, "resumed", "--ckpt_path=last")])
    a = torch.load(straight, map_location="cpu", weights_only=True)
    b = torch.load("logs/resumed/checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert a["global_step"] == b["global_step"] == 10
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert max(float((a["state_dict"][k] - b["state_dict"][k]).abs().max()) for k in a["state_dict"]
               if a["state_dict"][k].is_floating_point()) < 1e-6


# ------------------------------------------------------------------------------------------------ exports
def test_exports_merged_and_as_an_adapter_predict_what_the_checkpoint_predicts(straight, shared, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, pipeline

    module, _ = load_module(straight)
    expected = logits(module).softmax(-1)
    cs_export([str(straight), str(tmp_path / "merged")])
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    classifier = pipeline("text-classification", model=str(tmp_path / "merged"), device="cpu")
    got = classifier(TEXTS)
    assert [r["label"] for r in got] == [LABELS[i] for i in expected.argmax(-1).tolist()]
    assert [r["score"] for r in got] == pytest.approx(expected.max(-1).values.tolist(), abs=1e-5)

    cs_export(["--adapter", str(straight), str(tmp_path / "adapter")])
    info = json.loads((tmp_path / "adapter" / "cs_lightning.json").read_text())
    assert info["adapter"]["base"]["sha256"] == module.adapters["base"]["sha256"] and info["labels"] == LABELS
    base = AutoModelForSequenceClassification.from_pretrained(
        str(shared / "base"), num_labels=len(LABELS), id2label=dict(enumerate(info["labels"])))
    model = PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
    enc = module.tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(model(**enc).logits, logits(module), atol=1e-5)


def test_reply_adapters_train_through_cs_train_and_export_merged(shared, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cs_lightning.prompts import ReplyPrompt

    monkeypatch.setenv("CS_LIGHTNING_CACHE", str(shared / "cache"))
    main(["fit", "--model", "cs_lightning.models.ReplyGenerator", "--model.backbone=gpt", "--model.pretrained=false",
          "--model.model_size=tiny", "--model.max_new_tokens=6", "--model.learning_rate=0.01",
          "--model.peft={method: lora, r: 4}", "--data", "cs_lightning.data.DialogueDataModule",
          f"--data.train_file={shared / 'data' / 'dialogues.jsonl'}", "--data.val_fraction=0.25",
          "--data.tokenizer_vocab_size=300", "--data.batch_size=4", "--trainer.max_epochs=1",
          "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--experiment=reply"])
    ckpt = Path("logs/reply/checkpoints/last.ckpt")
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert any("trainable_tokens" in k for k in raw["state_dict"])  # the speaker markers' rows
    assert raw["cs_lightning"]["adapters"]["base"]["pretrained"] is False
    module, _ = load_module(ckpt)  # a base built from scratch is rebuilt the same (its hash is checked)
    context = [Turn("user", "where is my parcel")]
    expected = module.reply_to(context, domain="shop")
    out = Path("hf")
    cs_export([str(ckpt), str(out)])
    model, tok = AutoModelForCausalLM.from_pretrained(str(out)).eval(), AutoTokenizer.from_pretrained(str(out))
    ids = torch.tensor([ReplyPrompt(tok, "causal", 192, 6, True).encode(tuple(context), "shop")[0]])
    with torch.no_grad():
        generated = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids))[:, ids.shape[1]:]
    assert " ".join(tok.decode(generated[0], skip_special_tokens=True).split()) == expected


# ------------------------------------------------------------------------------------------------ settings
@pytest.mark.parametrize("peft, expected", [
    ({"method": "lorra"}, "model.peft.method: unknown method 'lorra' (choose one of lora, dora, ia3)"),
    ({"method": "lora", "rank": 8}, "model.peft.rank: unknown setting (the settings are method, r, alpha, dropout, "
                                    "target_modules)"),
    ({"method": "lora", "target_modules": ["query", "qkv"]},
     "model.peft.target_modules: 'qkv' matches no module of BertForSequenceClassification (its projections are "
     "query, key, value, dense;"),
    ({"method": "ia3", "r": 4}, "model.peft.r: (IA)³ learns scaling vectors"),
], ids=["method", "key", "target", "ia3-rank"])
def test_wrong_adapter_settings_are_one_line(peft, expected, shared, monkeypatch):
    monkeypatch.setenv("CS_LIGHTNING_CACHE", str(shared / "cache"))
    with pytest.raises(ConfigError) as err:
        build(shared, "intent", "bert", peft)
    assert str(err.value).startswith(expected)


def test_a_wrong_setting_stops_cs_train_before_training(shared, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", *fit_args(shared, "wrong"), "--model.peft={method: lorra}"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    assert [line for line in err.splitlines() if "error" in line] == [
        "cs-train: error: model.peft.method: unknown method 'lorra' (choose one of lora, dora, ia3)"]
    assert not Path("logs/wrong/checkpoints").exists()


@pytest.mark.parametrize("callback", [FreezeLayers, GradualUnfreezing])
def test_freezing_callbacks_refuse_adapters(callback, shared, monkeypatch):
    monkeypatch.setenv("CS_LIGHTNING_CACHE", str(shared / "cache"))
    module = build(shared, "intent", "bert", {"method": "lora"})
    with pytest.raises(ConfigError, match=rf"^trainer.callbacks: {callback.__name__} cannot be combined with "
                                          r"model.peft \(lora\): peft already freezes every base weight"):
        callback().setup(None, module, "fit")


@pytest.mark.parametrize("peft", [{"method": "lora", "dropout": 0.0}, None], ids=["lora", "full"])
def test_gradient_checkpointing_gives_the_same_gradients(peft, shared, monkeypatch):
    monkeypatch.setenv("CS_LIGHTNING_CACHE", str(shared / "cache"))
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)  # the same initialisation
        module = build(shared, "intent", "bert", peft, gradient_checkpointing=checkpointing,
                       config_overrides={"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0})
        assert any(getattr(m, "gradient_checkpointing", False) for m in module.modules()) == checkpointing
        module.train()
        loss_of(module, "intent").backward()
        grads.append({n: p.grad for n, p in module.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    assert all(grads[1][n] is not None and torch.allclose(grads[0][n], grads[1][n], atol=1e-6) for n in grads[0])


# ------------------------------------------------------------------------------------------------ DDP, precision
def test_adapters_on_two_ranks_at_half_batch_train_like_one_rank(straight, shared, tmp_path):
    """LoRA under DDP (2 CPU ranks, gloo): only the adapters and the head hold gradients, and 2 ranks at B/2 end where
    1 rank at B ends (the ``straight`` run), in a checkpoint that holds only what trains."""
    from test_distributed import assert_same_weights, cs_train

    cs_train("fit", fit_args(shared, "two", "--data.batch_size=2", "--trainer.devices=2", "--trainer.strategy=ddp",
                             "--trainer.accelerator=cpu"), cache=shared / "cache")
    one = torch.load(straight, map_location="cpu", weights_only=True)["state_dict"]
    two = torch.load("logs/two/checkpoints/last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    # adapters and head only (and the fitted temperature, a scalar buffer of the module)
    assert all(any(mark in k for mark in ADAPTED) for k in two if k != "temperature")
    assert_same_weights(two, one)


def test_adapters_train_and_resume_exactly_in_bf16_mixed(shared, tmp_path, monkeypatch):
    """bf16-mixed (autocast on the CPU): the adapters keep float32 master weights, the loss falls, and a stop and
    ``--ckpt_path last`` ends where a straight run ends."""
    monkeypatch.setenv("CS_LIGHTNING_CACHE", str(shared / "cache"))
    bf16 = ["--trainer.precision=bf16-mixed", "--trainer.accelerator=cpu"]
    main(["fit", *fit_args(shared, "bf16", *bf16)])
    stop = ["--trainer.callbacks+=run_helpers.SignalAt", "--trainer.callbacks.step=3"]
    with pytest.raises(SystemExit):
        main(["fit", *fit_args(shared, "bf16_resumed", *bf16, *stop)])
    main(["fit", *fit_args(shared, "bf16_resumed", *bf16, "--ckpt_path=last")])
    a = torch.load("logs/bf16/checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    b = torch.load("logs/bf16_resumed/checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert a["global_step"] == b["global_step"] == 10
    assert {v.dtype for v in a["state_dict"].values() if v.is_floating_point()} == {torch.float32}
    assert max(float((a["state_dict"][k] - b["state_dict"][k]).abs().max()) for k in a["state_dict"]) < 1e-6
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator("logs/bf16/version_0").Reload()
    losses = torch.tensor([e.value for e in events.Scalars("train/loss")])
    assert len(losses) == 10 and bool(torch.isfinite(losses).all()) and losses[-3:].mean() < losses[:3].mean()
