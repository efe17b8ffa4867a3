"""The configs of models that need a download (``configs/roberta_intent.yaml``: FacebookAI/roberta-base,
``configs/qwen_intent_lora.yaml``, ``configs/qwen_reply_lora.yaml`` and ``configs/qwen_reply_lora_zh.yaml``:
Qwen/Qwen2.5-0.5B-Instruct) train offline with a tiny random model of the same family substituted: saved as a hub folder
holds it (config.json, weights, tokenizer; Qwen's weights in bfloat16, as released; for the chat replies a ChatML
tokenizer with its chat template, as Qwen's) and given with ``--model.model_name_or_path``. Everything else comes from
the config as written (the reply tests shorten the replies, batches and sequences: a tiny model in
bf16-mixed on a CPU is slow at Qwen's lengths)."""

import logging
from pathlib import Path

import pytest
import torch
import yaml

from conftest import CONFIGS, shared_file
from cs_lightning.commands.train import main

TEXTS = ["where is my parcel", "forgot my password", "refund please", "my parcel is lost", "reset password",
         "i want my money back", "cancel my order", "talk to a human"]
CHAT_TEXTS = ["you are the customer service agent of an online shop", "your parcel arrives tomorrow",
              "你好，请给我推荐一家餐馆", "这家酒店的评分是4.5分，价格是每晚500元"]


def fit_logged(args: list[str]) -> list[str]:
    """``cs-train fit`` in this process; the lines it logged on rank zero."""
    messages: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    logger.addHandler(handler)
    try:
        main(["fit", *args])
    finally:
        logger.removeHandler(handler)
    return messages


def tiny_hub_folder(folder: Path, model_type: str, dtype: torch.dtype, tokenizer_kind: str | None = None,
                    causal_lm: bool = False) -> Path:
    """A random tiny ``model_type`` with its tokenizer (the family's kind, or ``tokenizer_kind``), written by
    ``save_pretrained`` in ``dtype``; ``causal_lm``: with its language-model head (a chat model's folder)."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    from cs_lightning.backbones.generic import GenericBackbone
    from cs_lightning.tokenization import train_tokenizer

    family = GenericBackbone(model_type)
    kind = tokenizer_kind or family.tokenizer_kind
    tokenizer = AutoTokenizer.from_pretrained(str(train_tokenizer(TEXTS * 3 + CHAT_TEXTS, kind, 300)))
    config = AutoConfig.for_model(model_type, **family.tiny_config(), vocab_size=len(tokenizer),
                                  pad_token_id=tokenizer.pad_token_id, dtype=dtype)
    (AutoModelForCausalLM if causal_lm else AutoModel).from_config(config).save_pretrained(str(folder))
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
    messages = fit_logged(["--config", str(CONFIGS / config), "--model.model_name_or_path", str(folder),
                           "--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
                           "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"])
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


@pytest.mark.parametrize("config, data, system", [
    ("qwen_reply_lora.yaml", None, "You are the customer service agent of an online shop."),
    ("qwen_reply_lora_zh.yaml", ("crosswoz", "val.json.zip"), "你是北京旅游出行服务的客服。"),
], ids=["en", "zh"])
def test_chat_reply_config_trains_offline_on_a_tiny_qwen2(config, data, system):
    text = (CONFIGS / config).read_text(encoding="utf-8")
    written = yaml.safe_load(text)
    init = written["model"]["init_args"]
    assert init["backbone"] == "auto" and init["model_name_or_path"] == "Qwen/Qwen2.5-0.5B-Instruct"
    assert init["peft"]["method"] == "lora" and init["peft"]["r"] == 16
    assert written["data"]["init_args"]["prompt_format"] == "chat" and written["trainer"]["precision"] == "bf16-mixed"
    assert "Needs a download" in text
    extra = []
    if data:  # the config names ../shared/data relative to the checkout; the test runs in its own folder
        extra = [f"--data.train_file={shared_file(*data)}"]
    folder = tiny_hub_folder(Path("tiny"), "qwen2", torch.bfloat16, tokenizer_kind="bpe-chatml", causal_lm=True)
    messages = fit_logged(["--config", str(CONFIGS / config), "--model.model_name_or_path", str(folder), *extra,
                           "--model.max_new_tokens=8", "--data.batch_size=2", "--data.max_length=256",
                           "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
                           "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false",
                           "--trainer.enable_model_summary=false"])
    ckpts = Path("logs") / Path(config).stem / "checkpoints"
    assert (ckpts / "last.ckpt").is_file() and list(ckpts.glob("best*.ckpt"))
    raw = torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=True)
    hp = raw["hyper_parameters"]
    assert raw["global_step"] == 2 and hp["chat"] and hp["system_message"].startswith(system)
    assert (ckpts / "system_prompt.txt").read_text(encoding="utf-8").startswith(system)
    assert any("backbone 'generic' for model type 'qwen2'" in m for m in messages), messages
    assert any(m.startswith("Reply prompts: the tokenizer's chat template") for m in messages), messages
    assert any(m.startswith("Memory for weights, gradients and AdamW state in bf16-mixed (float32)") for m in messages)
    assert raw["cs_lightning"]["adapters"]["method"] == "lora"
    assert all("lora_" in k for k in raw["state_dict"] if k.startswith("model."))  # no new tokens, no rows to train
    metrics = next(v for k, v in raw["callbacks"].items() if "Checkpoint" in k)
    assert metrics["best_model_score"] is not None  # val/loss on whole conversations
