"""Per-task data modules: each shows and takes only its own task's settings; domain modules exist per task and
bring their demo data (and, for dialogues, their business rules); a data module of the wrong task for the model is
one line naming the right class."""

import pytest

from conftest import CONFIGS
from cs_lightning.commands.train import main
from cs_lightning.data import (DOMAIN_MODULES, CSDataModule, DialogueDataModule, EcommerceDataModule,
                               FinanceDialogueDataModule, IntentDataModule)
from cs_lightning.errors import ConfigError

INTENT_ONLY = ("oos_label", "holdout_intents", "text_column", "label_column")
REPLY_ONLY = ("max_context_tokens", "max_reply_tokens", "rules_file", "generate_samples", "dialogue_format",
              "prompt_format", "system_prompt")
# max_length: tokens per intent input; for replies in the chat format, per conversation sequence and prompt
SHARED = ("train_file", "val_file", "batch_size", "language", "tokenizer", "pad_to_buckets", "max_length")


def help_of(class_path: str, capsys) -> str:
    with pytest.raises(SystemExit):
        main(["fit", "--data.help", class_path])
    return capsys.readouterr().out


@pytest.mark.parametrize("class_path, own, other", [
    ("cs_lightning.data.EcommerceDataModule", INTENT_ONLY, REPLY_ONLY),
    ("cs_lightning.data.IntentDataModule", INTENT_ONLY, REPLY_ONLY),
    ("cs_lightning.data.EcommerceDialogueDataModule", REPLY_ONLY, INTENT_ONLY),
    ("cs_lightning.data.DialogueDataModule", REPLY_ONLY, INTENT_ONLY),
])
def test_help_shows_the_settings_of_one_task(capsys, class_path, own, other):
    text = help_of(class_path, capsys)
    for name in own + SHARED:
        assert f"--data.{name} " in text, name
    for name in other + ("task",):
        assert f"--data.{name} " not in text, name


def test_a_setting_of_the_other_task_is_refused():
    with pytest.raises(TypeError):
        IntentDataModule(max_context_tokens=10, train_file="x.csv")


def test_domain_modules_exist_for_every_domain_and_task():
    for domain, by_task in DOMAIN_MODULES.items():
        assert by_task["intent"].domain == by_task["reply"].domain == domain
        assert issubclass(by_task["intent"], IntentDataModule) and by_task["intent"].task == "intent"
        assert issubclass(by_task["reply"], DialogueDataModule) and by_task["reply"].task == "reply"


def test_domain_dialogue_module_brings_demo_dialogues_and_rules():
    dm = FinanceDialogueDataModule(backbone="gpt", language="zh")
    assert dm.hparams.train_file.endswith("finance/dialogues/zh/train.jsonl")
    assert dm.rules_path.endswith("finance/rules.yaml") and dm.rules.blocked_phrases
    assert len(dm.records["train"]) > 50 and {"val", "test"} <= set(dm.records)


def test_a_sort_window_below_one_batch_is_one_line_naming_the_key():
    from cs_lightning.data import IntentDataModule

    with pytest.raises(ConfigError, match=r"data.mega_batch: must be at least 1, got 0 \(give the batches"):
        IntentDataModule(mega_batch=0)


def test_the_base_module_serves_no_task():
    with pytest.raises(ConfigError, match="serves no task"):
        CSDataModule(train_file="x.csv")


@pytest.mark.parametrize("config, data, expected", [
    ("gpt_reply.yaml", "cs_lightning.data.EcommerceDataModule", "use cs_lightning.data.EcommerceDialogueDataModule"),
    ("bert_intent.yaml", "cs_lightning.data.DialogueDataModule", "use cs_lightning.data.IntentDataModule"),
])
def test_data_of_the_wrong_task_is_one_line_naming_the_right_class(capsys, config, data, expected):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(CONFIGS / config), "--data", data, "--trainer.fast_dev_run=true"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and err[-1].startswith("cs-train: error: data.class_path:")
    assert expected in err[-1]


def test_intent_module_reads_the_demo_data_of_its_domain():
    dm = EcommerceDataModule(language="en")
    assert dm.hparams.train_file.endswith("ecommerce/en/train.jsonl") and len(dm.label_names) == 10
    assert not hasattr(dm, "rules_path")
