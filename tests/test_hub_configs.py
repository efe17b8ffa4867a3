"""The configs of models that need a download (``configs/roberta_intent.yaml``: FacebookAI/roberta-base,
``configs/qwen_intent_lora.yaml``: Qwen/Qwen2.5-0.5B-Instruct) train offline with a tiny random model of the same family
substituted: saved as a hub folder holds it (config.json, weights, tokenizer; Qwen's weights in bfloat16, as released)
and given with ``--model.model_name_or_path``. Everything else comes from the config as written."""

import logging
from pathlib import Path

import pytest
import torch
import yaml

from conftest import CONFIGS
from cs_lightning.commands.train import main

TEXTS = ["where is my parcel", "forgot my password", "refund please", "my parcel is lost", "reset password",
         "i want my money back", "cancel my order", "talk to a human"]


def tiny_hub_folder(folder: Path, model_type: str, dtype: torch.dtype) -> Path:
    """A random tiny ``model_type`` with its tokenizer, written by ``save_pretrained`` in ``dtype``."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from cs_lightning.backbones.generic import GenericBackbone
    from cs_lightning.tokenization import train_tokenizer

    family = GenericBackbone(model_type)
    tokenizer = AutoTokenizer.from_pretrained(str(train_tokenizer(TEXTS * 3, family.tokenizer_kind, 300)))
    config = AutoConfig.for_model(model_type, **family.tiny_config(), vocab_size=len(tokenizer),
                                  pad_token_id=tokenizer.pad_token_id, dtype=dtype)
    AutoModel.from_config(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


@pytest.mark.parametrize("config, model_type, hub_name, dtype, dtypes", [
    ("roberta_intent.yaml", "roberta", "FacebookAI/roberta-base", torch.float32, "float32"),
    ("qwen_intent_lora.yaml", "qwen2", "Qwen/Qwen2.5-0.5B-Instruct", torch.bfloat16, "float32"),
], ids=["roberta", "qwen"])
def test_hub_config_trains_offline_on_a_tiny_substitute(config, model_type, hub_name, dtype, dtypes):
    text = (CONFIGS / config).read_text()
    written = yaml.safe_load(text)["model"]["init_args"]
    assert written["backbone"] == "auto" and written["model_name_or_path"] == hub_name
    assert "Needs a download" in text  # said in the header comment
    folder = tiny_hub_folder(Path("tiny"), model_type, dtype)
    messages = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    logger.addHandler(handler)
    try:
        main(["fit", "--config", str(CONFIGS / config), "--model.model_name_or_path", str(folder),
              "--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
              "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"])
    finally:
        logger.removeHandler(handler)
    experiment = Path(config).stem
    ckpts = Path("logs") / experiment / "checkpoints"
    assert (ckpts / "last.ckpt").is_file() and list(ckpts.glob("best*.ckpt"))
    assert (ckpts / "tokenizer" / "tokenizer.json").is_file()
    raw = torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=True)
    assert raw["global_step"] == 2 and raw["hyper_parameters"]["model_name_or_path"] == str(folder)
    assert raw["hyper_parameters"]["backbone"] == "auto"
    assert len(raw["hyper_parameters"]["labels"]) == 10  # the e-commerce demo intents
    assert any(f"backbone 'generic' for model type '{model_type}'" in m for m in messages), messages
    # float32 weights whatever the folder holds (Qwen's are bf16): the precision setting decides, as for every family
    precision = yaml.safe_load(text)["trainer"]["precision"]
    assert any(m.startswith(f"Memory for weights, gradients and AdamW state in {precision} ({dtypes})")
               for m in messages), messages
    if written.get("peft"):
        assert raw["cs_lightning"]["adapters"]["method"] == "lora"
        assert all("lora_" in k or "modules_to_save" in k for k in raw["state_dict"] if k.startswith("model."))
