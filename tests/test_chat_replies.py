"""Chat-format reply models in use: business rules hold through the chat path (a tiny qwen2 with a byte-level BPE
ChatML tokenizer, English and Chinese, a blocked phrase mid-sentence split into single bytes) and
val/rule_violation_rate counts violations on the raw generations; cs-chat streams a chat model's reply as it is
generated (the constraint still in the generate call; errors as one line); cs-train predict answers a messages file
with one assistant message per conversation; cs-export writes a folder that AutoModelForCausalLM +
apply_chat_template + generate() answer with exactly as the checkpoint does."""

from __future__ import annotations

import io
import json
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from conftest import write
from cs_lightning.prompts import ChatPrompt, Turn
from cs_lightning.rules import PhraseMatcher, canonical
from test_chat_format import MESSAGES as CHAT_FORMAT_MESSAGES
from test_constraints import CORPUS, SENTENCES, Force, spellings

SYSTEM = "you help shop customers"
QUESTION = {"en": "where is my refund", "zh": "我的退款到哪里了"}
ENDING = {"en": "today", "zh": "到账"}  # the sentence's last word, after the blocked phrase


def jsonl(path: Path, rows) -> Path:
    return write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def chat_model(tmp_path: Path, rules: str | None, language: str = "en", max_new_tokens: int = 40):
    """A tiny random qwen2 ReplyGenerator in the chat format, with a bpe-chatml tokenizer trained offline."""
    from cs_lightning.models import ReplyGenerator
    from cs_lightning.tokenization import train_tokenizer

    tokenizer = train_tokenizer(CORPUS + [SYSTEM, QUESTION["en"], QUESTION["zh"]], "bpe-chatml", 400)
    rules_path = str(write(tmp_path / "rules.yaml", rules)) if rules is not None else None
    torch.manual_seed(0)
    module = ReplyGenerator(backbone="generic", model_type="qwen2", pretrained=False, model_size="tiny",
                            tokenizer_path=str(tokenizer), chat=True, system_message=SYSTEM, rules_path=rules_path,
                            language=language, max_new_tokens=max_new_tokens, no_repeat_ngram_size=0)
    return module.eval()


def force(module, target: list[int], extra: list[LogitsProcessor] = ()) -> None:
    """Every ``generate`` of ``module`` pushed towards ``target`` (then <|im_end|>) token by token, before the
    model's own processors (the blocked-phrase constraint among them) see the scores."""
    original = module.model.generate
    end = module.end_of_turn_id

    def generate(**kwargs):
        push = Force(target + [end], kwargs["input_ids"].shape[1])
        kwargs["logits_processor"] = LogitsProcessorList([push, *extra, *(kwargs.get("logits_processor") or [])])
        return original(**kwargs)

    module.model.generate = generate


def byte_split_target(tok, language: str) -> tuple[list[int], str, str]:
    """The sentence with its blocked phrase in single bytes (a Chinese character cut into its UTF-8 bytes)."""
    sentence, phrase, later = SENTENCES[language]
    target = spellings(tok, "bpe", sentence, phrase)["smallest pieces"]
    if language == "zh":  # the pieces really cut characters apart: one byte decodes to nothing whole
        pieces = [t for t in target if "\ufffd" in tok.decode([t])]
        assert len(pieces) == len(phrase.encode("utf-8"))
    return target, phrase, later


# ---------------------------------------------------------------------------------------------------- item 5: rules
@pytest.mark.parametrize("language", ["en", "zh"])
def test_a_chat_model_cannot_say_a_blocked_phrase_split_into_bytes_mid_sentence(tmp_path, language):
    sentence, phrase, later = SENTENCES[language]
    module = chat_model(tmp_path, f"blocked_phrases: [{phrase}]\n", language)
    target, phrase, later = byte_split_target(module.tokenizer, language)
    force(module, target)
    matcher = PhraseMatcher([phrase])
    ask = [Turn("user", QUESTION[language])]
    constrained = module.reply_to(ask)  # the chat path: template prompt, <|im_end|> among the end tokens
    assert matcher.find(constrained) == [], constrained  # the raw reply: nothing scrubs it afterwards
    # and it went on past the phrase to the sentence's end (the word after it may give way: the model's own next
    # choice takes the banned token's place)
    assert canonical(constrained).endswith(canonical(ENDING[language])), constrained
    module.rules = type(module.rules)()  # the same model without rules says the phrase
    free = module.reply_to(ask)
    assert matcher.find(free) == [canonical(phrase)] and canonical(sentence) in canonical(free), free


@pytest.mark.parametrize("language", ["en", "zh"])
def test_rule_violation_rate_is_measured_on_the_raw_generations(tmp_path, language):
    sentence, phrase, _ = SENTENCES[language]
    pattern = phrase if language == "zh" else f"\\\\b{phrase}\\\\b"  # whole words, as blocked phrases match
    forbidden = f"forbidden_patterns:\n  - name: promise\n    pattern: \"{pattern}\"\n"
    rates = {}
    for name, rules in (("no constraint", forbidden), ("constraint", f"blocked_phrases: [{phrase}]\n" + forbidden)):
        module = chat_model(tmp_path, rules, language)
        force(module, byte_split_target(module.tokenizer, language)[0])
        context = (Turn("user", QUESTION[language]),)
        ids = torch.tensor([ChatPrompt(module.tokenizer, SYSTEM).prompt_ids(context)])
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "contexts": [context],
                 "references": [sentence], "ids": ["c1"]}
        module._evaluate(batch, "val", module.val_metrics)
        rates[name] = {k: float(v) for k, v in module.val_metrics.compute("val").items()}
    # without blocked phrases the forbidden pattern sees the phrase the model generated: counted, not repaired
    free = rates["no constraint"]
    assert free["val/rule_violation_rate"] == 1.0 and free["val/rule/promise"] == 1.0
    # with it, the same generation never contains the phrase, and the rate says so
    assert rates["constraint"]["val/rule_violation_rate"] == 0.0
    assert rates["constraint"]["val/rule/blocked_phrase"] == 0.0 and rates["constraint"]["val/rule/promise"] == 0.0


# ---------------------------------------------------------------------------------------------------- item 6: cs-chat
class Slow(LogitsProcessor):
    """Counts the generation steps, each a little slow, so printing can be seen to happen between them."""

    def __init__(self):
        self.steps = 0

    def __call__(self, input_ids, scores):
        self.steps += 1
        time.sleep(0.03)
        return scores


class Spy(io.StringIO):
    """Standard output that notes the generation step at each write."""

    def __init__(self, slow: Slow):
        super().__init__()
        self.slow, self.writes = slow, []

    def write(self, text):
        if text:
            self.writes.append((text, self.slow.steps))
        return super().write(text)


def test_cs_chat_streams_a_chat_models_reply_as_it_is_generated_with_the_rules_holding(tmp_path, monkeypatch):
    from cs_lightning import checkpoints
    from cs_lightning.commands.chat import main as cs_chat

    module = chat_model(tmp_path, "blocked_phrases: [guaranteed]\n")
    target, phrase, later = byte_split_target(module.tokenizer, "en")
    slow = Slow()
    force(module, target, [slow])
    monkeypatch.setattr(checkpoints, "load_module", lambda *a, **k: (module, {"max_length": 256}))
    monkeypatch.setattr(sys, "stdin", io.StringIO("where is my refund\n/quit\n"))
    spy = Spy(slow)
    monkeypatch.setattr(sys, "stdout", spy)
    cs_chat(["--ckpt", "unused.ckpt"])
    out = spy.getvalue()
    line = next(row for row in out.splitlines() if row.startswith("agent: "))
    assert PhraseMatcher([phrase]).find(line) == [] and line.endswith(" today"), out  # streamed under the constraint
    words = [(text, step) for text, step in spy.writes if text.strip() and not text.startswith("agent:")]
    assert len(words) > 2  # piece by piece, not one line at the end
    assert words[0][1] < slow.steps, (words, slow.steps)  # the first words were out before generation ended


def test_cs_chat_streaming_errors_stay_one_line(tmp_path, monkeypatch, capsys):
    from cs_lightning import checkpoints
    from cs_lightning.commands.chat import main as cs_chat
    from cs_lightning.errors import ConfigError

    module = chat_model(tmp_path, None)

    def fail(**kwargs):
        raise ConfigError("model.max_new_tokens", "too many")

    module.model.generate = fail
    monkeypatch.setattr(checkpoints, "load_module", lambda *a, **k: (module, {}))
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\n"))
    with pytest.raises(SystemExit) as exit_:
        cs_chat(["--ckpt", "unused.ckpt"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.strip() == "cs-chat: error: model.max_new_tokens: too many"


# ---------------------------------------------------------------------------------------------------- predict, export
MESSAGES = CHAT_FORMAT_MESSAGES[:2]  # the two messages-format records (a system message in the first)


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory):
    """A tiny qwen2 chat model trained 1 epoch through cs-train (once for the module): its folder and arguments."""
    from cs_lightning.commands.train import main

    folder = tmp_path_factory.mktemp("chat_run")
    train = jsonl(folder / "train.jsonl", [{**row, "id": f"r{i}"} for i, row in enumerate(MESSAGES * 3)])
    args = ["--model", "cs_lightning.models.ReplyGenerator", "--model.backbone=generic", "--model.model_type=qwen2",
            "--model.pretrained=false", "--model.model_size=tiny", "--model.max_new_tokens=8",
            "--model.learning_rate=0.01", "--data", "cs_lightning.data.DialogueDataModule",
            f"--data.train_file={train}", "--data.val_fraction=0", "--data.prompt_format=chat",
            f"--data.system_prompt={SYSTEM}", "--data.tokenizer_vocab_size=300", "--data.batch_size=4",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--trainer.logger=false",
            "--experiment=chat"]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        mp.setattr(sys, "argv", ["cs-train"])
        mp.setenv("CS_LIGHTNING_CACHE", str(folder / "cache"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        main(["fit", *args, "--trainer.max_epochs=1"])
    return folder, args


def test_predict_answers_each_conversation_with_one_assistant_message(chat_run, tmp_path):
    from cs_lightning.commands.train import main

    folder, args = chat_run
    ask = jsonl(tmp_path / "ask.jsonl", [
        {"id": "a", "messages": [{"role": "system", "content": "You are the shop's agent."},
                                 {"role": "user", "content": "where is my parcel"}]},
        {"id": "b", "messages": [{"role": "user", "content": "i want a refund"},
                                 {"role": "assistant", "content": "the refund takes 5 days"},
                                 {"role": "user", "content": "thanks"}]},
        {"id": "c", "turns": [{"role": "user", "text": "where is my parcel"}]}])
    out = tmp_path / "predictions.jsonl"
    main(["predict", *args, f"--data.predict_file={ask}", f"--ckpt_path={folder / 'logs/chat/checkpoints/last.ckpt'}",
          f"--predict_output={out}"])
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in rows] == ["a", "b", "c"]
    inputs = [json.loads(line) for line in ask.read_text(encoding="utf-8").splitlines()]
    for row, given in zip(rows[:2], inputs):  # messages in, messages out: the input and one assistant message
        assert set(row) == {"id", "messages"}
        assert row["messages"][:-1] == given["messages"]
        assert row["messages"][-1]["role"] == "assistant" and isinstance(row["messages"][-1]["content"], str)
    assert set(rows[2]) == {"id", "reply"} and isinstance(rows[2]["reply"], str)  # our dialogue records: the reply
    # the output reads back as messages records (an assistant message each)
    from cs_lightning.data.dialogue import read_dialogues

    assert len(read_dialogues(jsonl(tmp_path / "back.jsonl", rows[:2]))) == 2


def test_exported_chat_folder_answers_with_plain_transformers_as_the_checkpoint(chat_run, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cs_lightning.checkpoints import load_module
    from cs_lightning.export import export

    folder, _ = chat_run
    ckpt = folder / "logs/chat/checkpoints/last.ckpt"
    out = export(ckpt, tmp_path / "hf")
    info = json.loads((out / "cs_lightning.json").read_text(encoding="utf-8"))
    model = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    tok = AutoTokenizer.from_pretrained(str(out))
    module, _ = load_module(ckpt, task="reply")
    replies = []
    for question in ("where is my parcel", "i want a refund", "我的退款到哪里了"):
        messages = [{"role": "system", "content": info["system_prompt"]}, {"role": "user", "content": question}]
        enc = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.no_grad():  # the folder's generation_config.json: greedy, limits, end of turn, no_repeat_ngram_size
            generated = model.generate(**enc)
        text = tok.decode(generated[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        replies.append(" ".join(text.split()))
        assert replies[-1] == module.reply_to([Turn("user", question)]), question
    assert any(replies)  # something was said, not only <|im_end|>
    assert model.generation_config.eos_token_id == module.eos_token_ids and not model.generation_config.do_sample
    assert model.generation_config.max_new_tokens == 8 and info["system_prompt"] == SYSTEM
