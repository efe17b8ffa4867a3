"""Every family of the generic backbone (any covered Hugging Face architecture) and ``backbone: auto``: the plugin
contract, training with each freezing callback, exports that predict what the checkpoint predicts, the choice of
plugin from a saved model folder, and one-line errors for uncovered model types."""

import json
from pathlib import Path

import pytest
import torch

from conftest import tiny_intent_files, write
from cs_lightning.backbones.generic import FAMILIES, GenericBackbone
from cs_lightning.checkpoints import load_module
from cs_lightning.commands.train import main
from cs_lightning.errors import ConfigError
from cs_lightning.export import export
from cs_lightning.prompts import ReplyPrompt, Turn
from cs_lightning.registry import resolve_backbone
from cs_lightning.testing import check_backbone

REPLY_TYPES = [t for t, family in FAMILIES.items() if family.reply]
CASES = [(t, "intent") for t in FAMILIES] + [(t, "reply") for t in REPLY_TYPES]
TEXTS = ["where is my parcel", "forgot my password", "refund please", "my parcel is lost", "reset password"]
DIALOGUES = [("where is my parcel", "it arrives tomorrow"), ("i want a refund", "your refund is on its way"),
             ("my card is lost", "we froze your card")]


@pytest.fixture(scope="session")
def shared(tmp_path_factory) -> Path:
    """One folder for the whole session: the training files, and the cache where each tokenizer kind is trained
    once (on these files) and the token ids are kept."""
    folder = tmp_path_factory.mktemp("families")
    tiny_intent_files(folder / "data")
    lines = [json.dumps({"id": f"d{i}", "domain": "shop", "turns": [{"role": "user", "text": ask},
                                                                     {"role": "agent", "text": answer}]})
             for i, (ask, answer) in enumerate(DIALOGUES * 4)]
    write(folder / "data" / "dialogues.jsonl", "\n".join(lines) + "\n")
    return folder


def fit(shared: Path, monkeypatch, model_type: str, task: str, callback: dict, experiment: str) -> Path:
    """``cs-train fit`` in-process: a tiny ``model_type`` model of ``task`` from scratch in the generic family
    (``backbone: auto``, or ``generic`` for the types a plugin is made for), 2 epochs with ``callback``; returns
    ``last.ckpt``."""
    monkeypatch.setenv("CS_LIGHTNING_CACHE", str(shared / "cache"))
    backbone = "auto" if resolve_backbone("auto", None, model_type).generic else "generic"
    data = shared / "data"
    if task == "intent":
        task_args = ["--model", "cs_lightning.models.IntentClassifier", "--data", "cs_lightning.data.IntentDataModule",
                     f"--data.train_file={data / 'train.csv'}", f"--data.val_file={data / 'val.csv'}"]
    else:
        task_args = ["--model", "cs_lightning.models.ReplyGenerator", "--model.max_new_tokens=8",
                     "--data", "cs_lightning.data.DialogueDataModule", f"--data.train_file={data / 'dialogues.jsonl'}",
                     "--data.val_fraction=0"]
    main(["fit", *task_args, f"--model.backbone={backbone}", f"--model.model_type={model_type}",
          "--model.pretrained=false", "--model.model_size=tiny", "--model.learning_rate=0.003",
          "--model.warmup_ratio=0.0", "--data.batch_size=4", "--data.tokenizer_vocab_size=300",
          "--trainer.max_epochs=2", f"--trainer.callbacks+={json.dumps(callback)}",
          "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", f"--experiment={experiment}"])
    return Path("logs") / experiment / "checkpoints" / "last.ckpt"


def optimizer_groups(ckpt: Path) -> list[dict]:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["optimizer_states"][0]["param_groups"]


def tensors(modules) -> set[int]:
    return {id(p) for m in modules for p in m.parameters()}


@pytest.mark.parametrize("model_type", list(FAMILIES))
def test_family_honours_the_backbone_contract(model_type, shared):
    from transformers import AutoConfig

    summary = check_backbone("generic", tmp_cache=str(shared / "contract"), model_type=model_type)
    assert summary["tasks"] == (["intent", "reply"] if FAMILIES[model_type].reply else ["intent"])
    # the standard size names reach each family's own config names
    config = AutoConfig.for_model(model_type, **GenericBackbone(model_type).tiny_config())
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (32, 2, 2)
    assert getattr(config, "decoder_layers", getattr(config, "num_decoder_layers", 2)) == 2


def test_decoders_get_a_pad_token_and_generate_from_left_padded_prompts(shared, monkeypatch):
    from cs_lightning.data import DialogueDataModule
    from cs_lightning.tokenization import train_tokenizer

    monkeypatch.setenv("CS_LIGHTNING_CACHE", str(shared / "cache"))
    llama = GenericBackbone("llama")
    tokenizer = llama.load_tokenizer(str(train_tokenizer(TEXTS, llama.tokenizer_kind, 300)))
    tokenizer.pad_token = None
    assert llama.prepare_tokenizer(tokenizer).pad_token == tokenizer.eos_token
    train = str(shared / "data" / "dialogues.jsonl")
    for model_type, left in (("qwen2", True), ("bart", False)):
        dm = DialogueDataModule(train_file=train, val_fraction=0, backbone="auto", model_type=model_type,
                                tokenizer_vocab_size=300, batch_size=12)
        batch = next(iter(dm.loader("train", shuffle=False, generation=True)))
        mask = batch["attention_mask"]
        assert bool((mask[:, -1] == 1).all()) == left and bool((mask[:, 0] == 1).all()) != left


@pytest.mark.parametrize("model_type, task", CASES)
def test_family_trains_with_frozen_layers_and_exports_what_it_predicts(model_type, task, shared, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer, pipeline

    freeze = {"class_path": "cs_lightning.callbacks.FreezeLayers", "init_args": {"num_frozen_blocks": -1}}
    ckpt = fit(shared, monkeypatch, model_type, task, freeze, f"{model_type}_{task}_freeze")
    module, _ = load_module(ckpt)
    assert (module.backbone.name, module.backbone.model_type) == ("generic", model_type)
    # the optimizer held exactly the head and the top group: the embeddings and lower blocks never trained
    groups = module.backbone.layer_groups(module.model)
    trainable = {id(p) for p in module.parameters()} - tensors(m for g in groups[:-1] for m in g.modules)
    assert sum(len(g["params"]) for g in optimizer_groups(ckpt)) == len(trainable)

    out = export(ckpt, Path("hf"))
    if task == "intent":
        expected = []
        for text in TEXTS:  # one at a time, as the pipeline reads them
            enc = module.tokenizer(text, return_tensors="pt")
            with torch.no_grad():
                probs = module(**{k: v for k, v in enc.items() if k in module.tokenizer.model_input_names}).softmax(-1)
            expected.append((module.labels[int(probs.argmax())], float(probs.max())))
        classifier = pipeline("text-classification", model=str(out), device="cpu")
        got = [(r["label"], r["score"]) for r in classifier(TEXTS)]
        assert [label for label, _ in got] == [label for label, _ in expected]
        assert [score for _, score in got] == pytest.approx([score for _, score in expected], abs=1e-5)
        return
    context = [Turn("user", "where is my parcel")]
    expected = module.reply_to(context, domain="shop")
    info = json.loads((out / "cs_lightning.json").read_text())
    assert info["reply_kind"] == FAMILIES[model_type].reply
    auto = AutoModelForCausalLM if info["reply_kind"] == "causal" else AutoModelForSeq2SeqLM
    model, tok = auto.from_pretrained(str(out)).eval(), AutoTokenizer.from_pretrained(str(out))
    ids = torch.tensor([ReplyPrompt(tok, info["reply_kind"], 192, 6, True).encode(tuple(context), "shop")[0]])
    with torch.no_grad():
        generated = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids))
    if info["reply_kind"] == "causal":
        generated = generated[:, ids.shape[1]:]
    assert " ".join(tok.decode(generated[0], skip_special_tokens=True).split()) == expected


@pytest.mark.parametrize("model_type, task", CASES)
def test_family_trains_with_gradual_unfreezing(model_type, task, shared, monkeypatch):
    gradual = {"class_path": "cs_lightning.callbacks.GradualUnfreezing",
               "init_args": {"unfreeze_every": 1, "lr_decay": 0.5}}
    ckpt = fit(shared, monkeypatch, model_type, task, gradual, f"{model_type}_{task}_gradual")
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    state = next(v for k, v in raw["callbacks"].items() if k.startswith("GradualUnfreezing"))
    assert state["unfrozen"] == 1  # the head trained first, one more group joined after epoch 1
    module, _ = load_module(ckpt)
    groups = module.backbone.layer_groups(module.model)
    headless = tensors(m for g in groups for m in g.modules) == {id(p) for p in module.parameters()}
    assert headless == (task == "reply" and model_type not in ("qwen2", "llama"))  # LM heads tied to embeddings
    # a tied LM head is no head of its own: the top block trains from the start, the one below joins
    joined = groups[-2] if headless else groups[-1]
    rates = [g["initial_lr"] for g in optimizer_groups(ckpt)]
    first, added = rates.index(0.0015), optimizer_groups(ckpt)[rates.index(0.0015):]
    assert set(rates[:first]) == {0.003} and {g["initial_lr"] for g in added} == {0.0015}
    assert sum(len(g["params"]) for g in added) == len(tensors(joined.modules))


def test_one_tokenizer_serves_families_with_and_without_token_types(shared, monkeypatch):
    from cs_lightning.data import IntentDataModule

    monkeypatch.setenv("CS_LIGHTNING_CACHE", str(shared / "cache"))
    train = str(shared / "data" / "train.csv")
    datasets = {}
    for backbone, model_type in (("bert", None), ("generic", "distilbert"), ("generic", "electra")):
        dm = IntentDataModule(train_file=train, backbone=backbone, model_type=model_type, tokenizer_vocab_size=300)
        dm.setup("fit")
        datasets[model_type or backbone] = dm.datasets["train"].encoded
    # the same trained WordPiece tokenizer and the same texts: the token cache still tells them apart
    assert "token_type_ids" in datasets["bert"] and "token_type_ids" in datasets["electra"]
    assert "token_type_ids" not in datasets["distilbert"]
    assert torch.equal(datasets["bert"]["input_ids"], datasets["distilbert"]["input_ids"])


def save_tiny(folder: Path, model_type: str, texts: list[str]) -> Path:
    """A random tiny ``model_type`` saved with ``save_pretrained``, with its tokenizer: what a hub folder holds."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from cs_lightning.tokenization import train_tokenizer

    family = GenericBackbone(model_type)
    tokenizer = AutoTokenizer.from_pretrained(str(train_tokenizer(texts, family.tokenizer_kind, 300)))
    config = AutoConfig.for_model(model_type, **family.tiny_config(), vocab_size=len(tokenizer),
                                  pad_token_id=tokenizer.pad_token_id)
    AutoModel.from_config(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


@pytest.mark.parametrize("model_type, chosen", [("roberta", "generic"), ("bert", "bert")])
def test_auto_picks_the_plugin_made_for_the_weights_else_the_generic_family(model_type, chosen, shared, tmp_path,
                                                                            monkeypatch):
    import cs_lightning.models.base as models_base

    files = {split: shared / "data" / f"{split}.csv" for split in ("train", "val")}
    folder = save_tiny(tmp_path / f"tiny-{model_type}", model_type, TEXTS * 3)
    assert type(resolve_backbone("auto", str(folder))).__name__ == ("GenericBackbone" if chosen == "generic"
                                                                     else "BertBackbone")
    built = []
    monkeypatch.setattr(models_base, "resolve_backbone",
                        lambda *args: built.append(resolve_backbone(*args)) or built[-1])
    main(["fit", "--model", "cs_lightning.models.IntentClassifier", "--model.backbone", "auto",
          "--model.model_name_or_path", str(folder), "--model.pretrained", "true", "--data",
          "cs_lightning.data.IntentDataModule", f"--data.train_file={files['train']}",
          f"--data.val_file={files['val']}", "--data.batch_size=4", "--trainer.max_epochs=1",
          "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--experiment=auto"])
    assert [b.name for b in built] == [chosen]
    assert getattr(built[0], "model_type", model_type) == model_type
    assert Path("logs/auto/checkpoints/last.ckpt").exists()


def test_an_uncovered_model_type_is_one_line(shared, capsys):
    files = {split: shared / "data" / f"{split}.csv" for split in ("train", "val")}
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--model", "cs_lightning.models.IntentClassifier", "--model.backbone=auto",
              "--model.model_type=falcon", "--model.pretrained=false", "--data", "cs_lightning.data.IntentDataModule",
              f"--data.train_file={files['train']}", "--trainer.enable_progress_bar=false"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert "model.model_type: model type 'falcon'" in err and "roberta" in err and "Add a backbone plugin" in err
    with pytest.raises(ConfigError, match="not covered by the generic family") as direct:
        GenericBackbone("falcon")
    assert "\n" not in str(direct.value)


def test_backbone_auto_needs_a_model_type_and_named_plugins_keep_theirs():
    with pytest.raises(ConfigError, match="model.model_type: backbone 'auto' needs the model type"):
        resolve_backbone("auto")
    with pytest.raises(ConfigError, match="backbone 'bert' takes bert, not 'qwen2'"):
        resolve_backbone("bert", None, "qwen2")
    assert resolve_backbone("auto", None, "gpt2").name == "gpt"  # the gpt plugin is made for gpt2
    assert resolve_backbone("generic", None, "gpt2").reply_kind == "causal"
    first, second = resolve_backbone("auto", None, "qwen2"), resolve_backbone("auto", None, "llama")
    assert (first.model_type, second.model_type) == ("qwen2", "llama") and first is not second


def test_cs_backbones_lists_what_the_generic_family_covers():
    from cs_lightning.commands.backbones import describe

    row = next(r for r in describe() if r["name"] == "generic")
    assert row["error"] is None and row["model_types"] == list(FAMILIES)
    assert row["covers"]["roberta"] == ["intent"] and row["covers"]["qwen2"] == ["intent", "reply"]
