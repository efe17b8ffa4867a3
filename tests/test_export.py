"""cs-export: checkpoints to Hugging Face folders that plain transformers loads and that behave the same."""

import json
from pathlib import Path

import pytest
import torch

from conftest import tiny_intent_files, write
from cs_lightning.commands.train import main
from cs_lightning.data.schema import Turn
from cs_lightning.checkpoints import load_module
from cs_lightning.export import export
from cs_lightning.commands.export import main as cs_export

TEXTS = ["where is my parcel", "forgot my password", "refund please", "my parcel is lost", "reset password",
         "money back for my order"]


def fit_intent(tmp_path, backbone):
    files = tiny_intent_files(tmp_path / "data")
    main(["fit", "--model", "cs_lightning.models.IntentClassifier", f"--model.backbone={backbone}",
          "--model.pretrained=false", "--model.model_size=tiny", "--model.learning_rate=0.003",
          "--data", "cs_lightning.data.IntentDataModule", f"--data.train_file={files['train']}",
          f"--data.val_file={files['val']}", "--data.batch_size=4", "--trainer.max_epochs=2",
          "--trainer.enable_progress_bar=false", f"--experiment=exp_{backbone}"])
    return Path(f"logs/exp_{backbone}/checkpoints/last.ckpt")


@pytest.mark.parametrize("backbone", ["bert", "gpt", "t5"])
def test_intent_export_loads_in_a_plain_pipeline_and_agrees(tmp_path, backbone):
    from transformers import pipeline

    ckpt = fit_intent(tmp_path, backbone)
    module, _ = load_module(ckpt)
    expected = module.predict_texts(TEXTS)
    cs_export([str(ckpt), str(tmp_path / "hf")])
    assert (tmp_path / "hf" / "model.safetensors").exists()
    classifier = pipeline("text-classification", model=str(tmp_path / "hf"), device="cpu")
    assert [r["label"] for r in classifier(TEXTS)] == expected
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert set(config["id2label"].values()) == {"delivery", "login", "refund"}


@pytest.mark.parametrize("backbone", ["gpt", "t5"])
def test_reply_export_generates_what_the_checkpoint_generates(tmp_path, backbone):
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    dialogues = [{"id": f"d{i}", "domain": "shop", "turns": [{"role": "user", "text": q}, {"role": "agent", "text": a}]}
                 for i, (q, a) in enumerate([("where is my parcel", "it arrives in 2 days"),
                                             ("i want a refund", "the refund takes 5 days"),
                                             ("change my address", "send me the new address")])]
    train = write(tmp_path / "train.jsonl", "".join(json.dumps(d) + "\n" for d in dialogues))
    main(["fit", "--model", "cs_lightning.models.ReplyGenerator", f"--model.backbone={backbone}",
          "--model.pretrained=false", "--model.model_size=tiny", "--model.max_new_tokens=8",
          "--model.learning_rate=0.01", "--data", "cs_lightning.data.DialogueDataModule", f"--data.train_file={train}",
          "--data.val_fraction=0", "--data.tokenizer_vocab_size=300", "--trainer.max_epochs=3",
          "--trainer.enable_progress_bar=false", "--experiment=reply"])
    ckpt = Path("logs/reply/checkpoints/last.ckpt")
    module, _ = load_module(ckpt)
    context = [Turn("user", "where is my parcel")]
    expected = module.reply_to(context, domain="shop")
    out = export(ckpt, tmp_path / "hf")
    info = json.loads((out / "cs_lightning.json").read_text())
    auto = AutoModelForCausalLM if info["reply_kind"] == "causal" else AutoModelForSeq2SeqLM
    model, tok = auto.from_pretrained(str(out)).eval(), AutoTokenizer.from_pretrained(str(out))
    # the prompt exactly as cs-lightning builds it (cs_lightning.json documents the same format)
    from cs_lightning.prompts import ReplyPrompt

    ids = torch.tensor([ReplyPrompt(tok, info["reply_kind"], 192, 6, True).encode(tuple(context), "shop")[0]])
    if info["reply_kind"] == "causal":
        assert tok.decode(ids[0]) == "shop:<|user|> where is my parcel<|agent|>"  # the documented format
    with torch.no_grad():
        generated = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids))
    if info["reply_kind"] == "causal":
        generated = generated[:, ids.shape[1]:]
    text = " ".join(tok.decode(generated[0], skip_special_tokens=True).split())
    assert text == expected


def test_export_of_a_missing_checkpoint_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cs_export([str(tmp_path / "nope.ckpt"), str(tmp_path / "out")])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().count("\n") == 0


def test_export_best_at_the_end_of_fit(tmp_path):
    from cs_lightning.callbacks import ExportBest
    from cs_lightning.commands.train import CSLightningCLI

    files = tiny_intent_files(tmp_path / "data")
    args = ["--model", "cs_lightning.models.IntentClassifier", "--model.backbone=bert", "--model.pretrained=false",
            "--model.model_size=tiny", "--data", "cs_lightning.data.IntentDataModule",
            f"--data.train_file={files['train']}", f"--data.val_file={files['val']}", "--data.batch_size=4",
            "--trainer.max_epochs=1", "--trainer.enable_progress_bar=false", "--experiment=auto"]
    cli = CSLightningCLI(args=args, run=False, trainer_defaults={"callbacks": [ExportBest(str(tmp_path / "auto"))]})
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert (tmp_path / "auto" / "model.safetensors").exists() and (tmp_path / "auto" / "tokenizer.json").exists()
