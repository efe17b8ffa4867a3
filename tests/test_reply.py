"""Reply generation: context building, loss masking, tiny GPT/T5 overfitting, metrics, rules, predict."""

import json
from pathlib import Path

import pytest
import torch

from conftest import write
from cs_lightning.commands.train import main
from cs_lightning.data import DialogueDataModule, EcommerceDialogueDataModule
from cs_lightning.data.dialogue import read_dialogues, reply_examples
from cs_lightning.prompts import SPECIAL_MARKERS, ContextBuilder
from cs_lightning.data.schema import Turn
from cs_lightning.errors import DataError
from cs_lightning.models import ReplyGenerator
from cs_lightning.models.reply import GenerationMetrics
from cs_lightning.rules import BusinessRules

DIALOGUES = [
    {"id": "d1", "domain": "shop", "turns": [
        {"role": "user", "text": "where is my parcel"}, {"role": "agent", "text": "it arrives in 2 days"},
        {"role": "user", "text": "thanks"}, {"role": "agent", "text": "you are welcome"}]},
    {"id": "d2", "domain": "shop", "turns": [
        {"role": "user", "text": "i want a refund"}, {"role": "agent", "text": "the refund takes 5 days"}]},
    {"id": "d3", "domain": "shop", "turns": [
        {"role": "user", "text": "can i change my address"}, {"role": "agent", "text": "yes, send the new address"}]},
]


def dialogue_file(tmp_path, dialogues=DIALOGUES, name="d.jsonl"):
    return write(tmp_path / name, "".join(json.dumps(d) + "\n" for d in dialogues))


def tiny_module(tmp_path, backbone):
    files = {split: str(dialogue_file(tmp_path, name=f"{split}.jsonl")) for split in ("train", "val")}
    dm = DialogueDataModule(train_file=files["train"], val_file=files["val"], backbone=backbone, batch_size=8,
                            generate_samples=3, tokenizer_vocab_size=300)
    model = ReplyGenerator(backbone=backbone, pretrained=False, model_size="tiny", tokenizer_path=dm.tokenizer_path,
                           learning_rate=3e-3, max_new_tokens=8)
    return dm, model


def test_every_agent_turn_is_an_example_with_the_turns_before_it(tmp_path):
    examples = reply_examples(read_dialogues(dialogue_file(tmp_path)))
    assert [e.id for e in examples] == ["d1#1", "d1#3", "d2#1", "d3#1"]
    assert [t.text for t in examples[1].context] == ["where is my parcel", "it arrives in 2 days", "thanks"]
    assert examples[1].reply == "you are welcome"


def test_context_builder_keeps_newest_turns_within_budget(tmp_path):
    dm = DialogueDataModule(train_file=str(dialogue_file(tmp_path)), backbone="gpt", tokenizer_vocab_size=300)
    tok = dm.tokenizer
    turns = [Turn("user", "one two three four five six"), Turn("agent", "seven eight"), Turn("user", "nine ten")]
    builder = ContextBuilder(tok, max_turns=None, markers=SPECIAL_MARKERS)
    full = builder.context_ids(turns, 1000)
    assert tok.decode(full).startswith("<|user|>") and tok.convert_tokens_to_ids("<|agent|>") in full
    cut = builder.context_ids(turns, 8)
    assert len(cut) == 8 and cut == full[-8:]  # the oldest tokens went first
    assert builder.context_ids(turns, 1000)[: len(builder.context_ids(turns[-1:], 1000))] != []
    two = ContextBuilder(tok, max_turns=2, markers=SPECIAL_MARKERS).context_ids(turns, 1000)
    assert "one" not in tok.decode(two) and "seven" in tok.decode(two)
    prefixed = ContextBuilder(tok, markers=SPECIAL_MARKERS, domain_prefix=True).context_ids(turns[-1:], 1000, "shop")
    assert tok.decode(prefixed).replace(" ", "").startswith("shop:")


@pytest.mark.parametrize("backbone", ["gpt", "t5"])
def test_loss_mask_covers_exactly_the_reply_tokens(tmp_path, backbone):
    dm, _ = tiny_module(tmp_path, backbone)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    tok = dm.tokenizer
    for row in range(len(batch["ids"])):
        labels = batch["labels"][row]
        reply_ids = labels[labels != -100].tolist()
        assert reply_ids[-1] == tok.eos_token_id
        example = next(e for e in dm.records["train"] if e.id == batch["ids"][row])
        assert tok.decode(reply_ids, skip_special_tokens=True).strip() == example.reply
        if backbone == "gpt":  # the masked part is the prompt, ending on the agent marker
            prompt = batch["input_ids"][row][labels == -100][batch["attention_mask"][row][labels == -100] == 1]
            assert prompt[-1].item() == tok.convert_tokens_to_ids("<|agent|>")


@pytest.mark.parametrize("backbone", ["gpt", "t5"])
def test_tiny_model_overfits_one_batch_then_generates(tmp_path, backbone):
    torch.manual_seed(0)
    dm, model = tiny_module(tmp_path, backbone)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    losses = []
    for _ in range(40):
        loss = model(batch["input_ids"], batch["attention_mask"], batch["labels"]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 2, losses[::10]
    model.eval()
    reply = model.reply_to([Turn("user", "i want a refund")], domain="shop")
    assert reply.strip()


def test_metrics_on_known_strings_english_and_chinese():
    en = GenerationMetrics("en", [])
    en.update_generation(["the refund takes 5 days"], ["the refund takes 5 days"], [[]])
    perfect = en.compute("val")
    assert perfect["val/bleu"] > 99 and perfect["val/rougeL"] > 99 and perfect["val/chrf"] > 99
    zh = GenerationMetrics("zh", ["blocked_phrase"])
    zh.update_generation(["退款将在3个工作日内到账", "好的"], ["退款会在3个工作日内到账", "您好"], [[], ["blocked_phrase"]])
    scores = zh.compute("val")
    assert scores["val/rougeL"] > 40 and scores["val/bleu"] > 10  # Chinese is scored, not dropped
    assert scores["val/rule_violation_rate"] == pytest.approx(0.5)
    assert scores["val/rule/blocked_phrase"] == pytest.approx(0.5)


def test_rules_count_violations(tmp_path):
    rules = BusinessRules.load(write(tmp_path / "r.yaml", """
blocked_phrases: [guaranteed return]
required:
  - name: refund_time_frame
    when_reply: "refund"
    pattern: "\\\\d+ days"
forbidden_patterns:
  - name: card
    pattern: "(?:\\\\d[ -]?){13,19}"
"""))
    assert rules.violations("Your refund is on its way") == ["refund_time_frame"]
    assert rules.violations("Your refund arrives in 5 days") == []
    assert rules.violations("A guaranteed return! Card 4111 1111 1111 1111") == ["blocked_phrase", "card"]
    assert rules.violations("an unguaranteed return") == []  # whole words: a longer word is not the phrase


def test_blocked_phrase_is_never_generated(tmp_path):
    torch.manual_seed(0)
    blocked = "you are welcome"
    rules = write(tmp_path / "rules.yaml", f"blocked_phrases: [{blocked!r}]\n")
    dm, _ = tiny_module(tmp_path, "gpt")
    model = ReplyGenerator(backbone="gpt", pretrained=False, model_size="tiny", tokenizer_path=dm.tokenizer_path,
                           max_new_tokens=12, no_repeat_ngram_size=0, rules_path=str(rules))
    assert model.bad_words_ids
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(60):  # teach it to say the blocked phrase after "thanks"
        loss = model(batch["input_ids"], batch["attention_mask"], batch["labels"]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    context = [Turn("user", "where is my parcel"), Turn("agent", "it arrives in 2 days"), Turn("user", "thanks")]
    reply = model.reply_to(context, domain="shop")
    assert model.rules.violations(reply) == []  # whole words: it may escape into a longer word, never the phrase
    unblocked = ReplyGenerator(backbone="gpt", pretrained=False, model_size="tiny", tokenizer_path=dm.tokenizer_path,
                               max_new_tokens=12, no_repeat_ngram_size=0)
    unblocked.load_state_dict(model.state_dict())
    unblocked.eval()
    assert blocked in unblocked.reply_to(context, domain="shop").lower()  # the test can fail: it learned the phrase


def test_invalid_rule_pattern_names_file_line_and_field(tmp_path):
    path = write(tmp_path / "rules.yaml", "blocked_phrases: [x]\nforbidden_patterns:\n  - name: bad\n    pattern: \"([a-z\"\n")
    with pytest.raises(DataError) as err:
        BusinessRules.load(path)
    message = str(err.value)
    assert message.startswith(f"{path}:4: forbidden_patterns.0.pattern: invalid regular expression")
    assert "\n" not in message


@pytest.mark.parametrize("records, expected", [
    ([{"id": "a", "turns": [{"role": "user", "text": "hello"}]}], "d.jsonl:1: turns: dialogue has no agent turn"),
    ([{"id": "a", "turns": [{"role": "bot", "text": "hello"}]}], "d.jsonl:1: turns.role: turn 1 has unknown role 'bot'"),
    ([{"id": "a", "turns": [{"role": "user", "text": " "}, {"role": "agent", "text": "hi"}]}],
     "d.jsonl:1: turns.text: turn 1 is empty"),
    ([{"id": "a", "turns": []}], "d.jsonl:1: turns: missing or empty 'turns' list"),
])
def test_bad_dialogues(tmp_path, records, expected):
    with pytest.raises(DataError) as err:
        read_dialogues(dialogue_file(tmp_path, records))
    assert str(err.value).startswith(str(tmp_path / expected)) and "\n" not in str(err.value)


def test_dialogue_line_that_is_not_json(tmp_path):
    path = write(tmp_path / "d.jsonl", json.dumps(DIALOGUES[0]) + "\n{not json\n")
    with pytest.raises(DataError, match=r"d.jsonl:2: not valid JSON"):
        read_dialogues(path)


def test_context_longer_than_the_window_is_truncated_not_crashing(tmp_path):
    long = [{"id": "long", "turns": [{"role": "user", "text": " ".join(["word"] * 400)},
                                     {"role": "agent", "text": "ok"}]}] + DIALOGUES
    dm = DialogueDataModule(train_file=str(dialogue_file(tmp_path, long)), val_fraction=0, backbone="gpt",
                            max_context_tokens=32, tokenizer_vocab_size=300)
    dm.setup("fit")
    assert max(dm.datasets["train"].lengths) <= 32 + 64 + 1


def test_domain_demo_dialogues_and_rules_load():
    for language in ("en", "zh"):
        dm = EcommerceDialogueDataModule(language=language, backbone="t5")
        assert len(dm.records["train"]) > 100 and dm.rules.blocked_phrases
        assert dm.tokenizer.convert_tokens_to_ids("<|agent|>") != dm.tokenizer.unk_token_id


def test_predict_writes_one_reply_per_conversation(tmp_path):
    train = dialogue_file(tmp_path, name="train.jsonl")
    to_answer = write(tmp_path / "ask.jsonl", "".join(json.dumps({"id": f"q{i}", "turns": [
        {"role": "user", "text": text}]}) + "\n" for i, text in enumerate(["hello", "where is my parcel", "refund"])))
    args = ["--model", "cs_lightning.models.ReplyGenerator", "--model.backbone=gpt", "--model.pretrained=false",
            "--model.model_size=tiny", "--model.max_new_tokens=6", "--data", "cs_lightning.data.DialogueDataModule",
            f"--data.train_file={train}", "--data.val_fraction=0", "--data.tokenizer_vocab_size=300",
            "--trainer.enable_progress_bar=false", "--experiment=chat", "--trainer.logger=false"]
    main(["fit", *args, "--trainer.max_epochs=1"])
    main(["predict", *args, f"--data.predict_file={to_answer}", "--ckpt_path=last"])
    rows = [json.loads(line) for line in Path("logs/chat/predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["q0", "q1", "q2"]
    assert all(isinstance(r["reply"], str) for r in rows)
