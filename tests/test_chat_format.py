"""Replies in chat templates: ChatML for tokenizers trained offline, whole conversations with the loss on every
assistant turn (exactly its tokens and the end-of-turn token, ChatML and a Llama-3-style template), splitting at turn
boundaries, the messages JSON Lines format and its validation, prompt-format errors, system prompts, and a tiny
qwen2 chat model through cs-train that stops generating at <|im_end|>."""

import json
from pathlib import Path

import pytest
import torch

from conftest import write
from cs_lightning.commands.data import main as cs_data
from cs_lightning.commands.train import main
from cs_lightning.data import DialogueDataModule, EcommerceDialogueDataModule
from cs_lightning.data.base import DEMO_ROOT
from cs_lightning.data.dialogue import read_dialogues
from cs_lightning.errors import ConfigError, DataError
from cs_lightning.prompts import ChatPrompt, ChatTemplateError, Turn

TEXTS = ["where is my parcel", "it arrives in 2 days", "thanks", "you are welcome", "i want a refund",
         "the refund takes 5 days", "you help shop customers", "退款会在3个工作日内到账"]
TURNS = (Turn("user", "where is my parcel"), Turn("agent", "it arrives in 2 days"), Turn("user", "thanks"),
         Turn("agent", "you are welcome"))
LLAMA3 = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
          "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
          "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
MESSAGES = [
    {"id": "m1", "messages": [{"role": "system", "content": "You are the shop's agent."},
                              {"role": "user", "content": "where is my parcel"},
                              {"role": "assistant", "content": "it arrives in 2 days"},
                              {"role": "user", "content": "thanks"},
                              {"role": "assistant", "content": "you are welcome"}]},
    {"messages": [{"role": "user", "content": "i want a refund"},
                  {"role": "assistant", "content": "the refund takes 5 days"}]},
    {"id": "t1", "turns": [{"role": "user", "text": "can i change my address"},
                           {"role": "agent", "text": "yes, send the new address"}]},
]


def jsonl(path: Path, rows) -> Path:
    return write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def chatml_tokenizer():
    from transformers import AutoTokenizer

    from cs_lightning.tokenization import train_tokenizer

    return AutoTokenizer.from_pretrained(str(train_tokenizer(TEXTS, "bpe-chatml", 300, lowercase=False)))


def llama3_tokenizer():
    from transformers import AutoTokenizer

    from cs_lightning.tokenization import train_tokenizer

    tok = AutoTokenizer.from_pretrained(str(train_tokenizer(TEXTS, "bpe", 300, lowercase=False)))
    tok.add_special_tokens({"bos_token": "<|begin_of_text|>", "additional_special_tokens": [
        "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]})
    tok.chat_template = LLAMA3
    return tok


def labelled_runs(ids, mask) -> list[list[int]]:
    runs, current = [], []
    for token, labelled in zip(ids, mask):
        if labelled:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    return runs + ([current] if current else [])


@pytest.mark.parametrize("make, end", [(chatml_tokenizer, "<|im_end|>"), (llama3_tokenizer, "<|eot_id|>")],
                         ids=["chatml", "llama3"])
def test_loss_mask_is_exactly_every_assistant_turn_and_its_end_of_turn_token(make, end):
    tok = make()
    prompt = ChatPrompt(tok, "you help shop customers")
    assert prompt.end_of_turn == end
    turns = TURNS + (Turn("user", "i want a refund"), Turn("agent", "退款会在3个工作日内到账"))
    [(ids, mask)] = prompt.encode_conversation(turns)
    templated = tok.apply_chat_template(prompt.messages(turns), tokenize=True)
    assert ids == list(templated["input_ids"] if hasattr(templated, "keys") else templated)
    runs = labelled_runs(ids, mask)
    replies = [t.text for t in turns if t.role == "agent"]
    assert [tok.decode(run) for run in runs] == [reply + end for reply in replies]
    for run, reply in zip(runs, replies):  # the tokens, not only their text: the content's, then end of turn
        assert run[-1] == tok.convert_tokens_to_ids(end)
        assert tok.decode(run[:-1]) == reply
    # nothing else is labelled: the system message, user turns and the template's headers are context
    assert sum(mask) == sum(len(r) for r in runs)


def test_a_template_that_rewrites_earlier_turns_is_one_line():
    tok = chatml_tokenizer()
    # renders only the last two messages: template(messages[:k]) is then no prefix of template(messages)
    tok.chat_template = ("{% for m in messages[-2:] %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                         "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    with pytest.raises(ChatTemplateError) as err:
        ChatPrompt(tok).encode_conversation(TURNS)
    assert "is not a prefix of template(messages)" in str(err.value) and "\n" not in str(err.value)


def test_long_conversation_is_split_at_user_turns_each_piece_with_the_system_message():
    tok = chatml_tokenizer()
    system = "you help shop customers"
    whole = ChatPrompt(tok, system).encode_conversation(TURNS * 3)
    assert len(whole) == 1  # one sequence per conversation when it fits
    limit = len(whole[0][0]) // 2
    prompt = ChatPrompt(tok, system, max_length=limit)
    pieces = prompt.encode_conversation(TURNS * 3)
    assert len(pieces) > 1 and prompt.split == 1 and prompt.truncated == 0
    for ids, mask in pieces:
        text = tok.decode(ids)
        assert len(ids) <= limit and text.startswith(f"<|im_start|>system\n{system}<|im_end|>")
        assert text.split("<|im_end|>\n", 1)[1].startswith("<|im_start|>user")  # cut before a user turn
    replies = [tok.decode(run) for ids, mask in pieces for run in labelled_runs(ids, mask)]
    assert replies == [t.text + "<|im_end|>" for t in TURNS * 3 if t.role == "agent"]  # every reply, once
    # one exchange longer than the limit: cut from the left, its reply kept
    tiny = ChatPrompt(tok, system, max_length=12)
    [(ids, mask)] = tiny.encode_conversation(TURNS[:2])
    assert len(ids) == 12 and tiny.truncated == 1
    assert tok.decode(labelled_runs(ids, mask)[0]) == "it arrives in 2 days<|im_end|>"


def test_messages_jsonl_reads_as_dialogues_beside_our_format(tmp_path):
    dialogues = read_dialogues(jsonl(tmp_path / "chat.jsonl", MESSAGES))
    assert [d.id for d in dialogues] == ["m1", "chat.jsonl:2", "t1"]
    assert dialogues[0].system == "You are the shop's agent." and dialogues[1].system is None
    assert [t.role for t in dialogues[0].turns] == ["user", "agent", "user", "agent"]
    assert dialogues[0].turns[1].text == "it arrives in 2 days"


@pytest.mark.parametrize("messages, expected", [
    ([], "messages: missing or empty 'messages' list"),
    ([{"role": "bot", "content": "hi"}], "messages.role: message 1 has unknown role 'bot'"),
    ([{"role": "user", "content": "hi"}, {"role": "user", "content": "hello?"}],
     "messages.role: message 2 is from the user but the assistant speaks next"),
    ([{"role": "assistant", "content": "hi"}], "messages.role: message 1 is from the assistant but the user"),
    ([{"role": "user", "content": " "}, {"role": "assistant", "content": "hi"}],
     "messages.content: message 1 is empty"),
    ([{"role": "user", "content": [{"type": "text"}]}], "messages.content: message 1 content is a list, not text"),
    ([{"role": "user", "content": "hi"}, {"role": "system", "content": "be nice"}],
     "messages.role: message 2 is a system message after the conversation started"),
    ([{"role": "user", "content": "hi"}], "messages: no assistant message"),
], ids=["empty", "role", "alternate", "starts-with-assistant", "blank", "parts", "late-system", "no-assistant"])
def test_bad_messages_records_are_one_line_with_file_and_line(tmp_path, messages, expected):
    path = jsonl(tmp_path / "chat.jsonl", [MESSAGES[0], {"id": "bad", "messages": messages}])
    with pytest.raises(DataError) as err:
        read_dialogues(path)
    assert str(err.value).startswith(f"{path}:2: {expected}") and "\n" not in str(err.value)


def test_cs_data_validate_checks_messages_records(tmp_path, capsys):
    path = jsonl(tmp_path / "chat.jsonl", MESSAGES + [
        {"id": "x", "messages": [{"role": "user", "content": "hello"}]},
        {"id": "y", "messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}])
    with pytest.raises(SystemExit) as exit_:
        cs_data(["validate", "--task", "dialogue", str(path)])
    out = capsys.readouterr().out
    assert exit_.value.code == 1 and "3 dialogues, 2 error(s)" in out
    assert f"{path}:4: messages: no assistant message" in out and f"{path}:5: messages.role: message 2" in out


def test_prompt_format_errors_are_one_line(tmp_path):
    train = str(jsonl(tmp_path / "d.jsonl", MESSAGES))
    common = dict(train_file=train, val_fraction=0, tokenizer_vocab_size=300)
    with pytest.raises(ConfigError, match=r"^data.prompt_format: the chat format needs a causal \(decoder\) model"):
        DialogueDataModule(backbone="t5", prompt_format="chat", **common)
    with pytest.raises(ConfigError, match=r"^data.prompt_format: unknown format 'chatml' \(use one of auto, chat"):
        DialogueDataModule(backbone="gpt", prompt_format="chatml", **common)
    with pytest.raises(ConfigError, match=r"^data.system_prompt: a system prompt needs the chat format"):
        DialogueDataModule(backbone="gpt", prompt_format="markers", system_prompt="be nice", **common)
    with pytest.raises(ConfigError, match=r"^data.system_prompt: file prompts/missing.txt not found"):
        DialogueDataModule(backbone="gpt", prompt_format="chat", system_prompt="prompts/missing.txt", **common)
    # auto: a tokenizer trained here has no template, so the marker format (gpt2, t5 as before)
    assert DialogueDataModule(backbone="gpt", **common).prompt_format == "markers"


def test_chat_data_encodes_each_conversation_once_and_generates_per_assistant_turn(tmp_path):
    train = str(jsonl(tmp_path / "d.jsonl", MESSAGES))
    prompt_file = write(tmp_path / "system.txt", "you help shop customers\n")
    dm = DialogueDataModule(train_file=train, val_file=train, backbone="generic", model_type="qwen2",
                            prompt_format="chat", system_prompt=str(prompt_file), tokenizer_vocab_size=300,
                            batch_size=8, generate_samples=8)
    assert dm.system_prompt == "you help shop customers" and "<|user|>" not in dm.tokenizer.get_vocab()
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 3 and len(dm.datasets["val_turns"]) == 4  # conversations; agent turns
    batch = next(iter(dm.train_dataloader()))
    tok = dm.tokenizer
    for row, rid in enumerate(batch["ids"]):
        text = tok.decode(batch["input_ids"][row][batch["attention_mask"][row] == 1])
        own = "You are the shop's agent." if rid == "m1" else "you help shop customers"
        assert text.startswith(f"<|im_start|>system\n{own}<|im_end|>")  # a dialogue's own system message wins
    loss_loader, generation_loader = dm.val_dataloader()
    prompts = next(iter(generation_loader))
    for ids, mask, reference in zip(prompts["input_ids"], prompts["attention_mask"], prompts["references"]):
        assert tok.decode(ids[mask == 1]).endswith("<|im_start|>assistant\n") and reference


def test_domain_modules_ship_a_system_prompt_in_each_language():
    for domain in ("ecommerce", "finance", "medical"):
        for language in ("en", "zh"):
            text = (DEMO_ROOT / domain / f"system_prompt.{language}.txt").read_text(encoding="utf-8")
            assert len(text) > 100 and ("Rules" in text or "规则" in text)
    dm = EcommerceDialogueDataModule(language="zh", backbone="generic", model_type="qwen2", prompt_format="chat",
                                     tokenizer_vocab_size=2000)
    assert dm.system_prompt.startswith("你是一家网店的客服")
    assert "<|im_end|>" in dm.tokenizer.get_vocab()


class ScriptedHead(torch.nn.Module):
    """An LM head that ignores the model: token ``script[i]`` at the ``i``-th call (then ``after`` for ever)."""

    def __init__(self, vocab: int, script: list[int], after: int):
        super().__init__()
        self.vocab, self.script, self.after, self.calls = vocab, script, after, 0

    def forward(self, hidden):
        token = self.script[self.calls] if self.calls < len(self.script) else self.after
        self.calls += 1
        logits = torch.zeros(*hidden.shape[:-1], self.vocab)
        logits[..., token] = 10.0
        return logits


def test_tiny_qwen2_chat_model_trains_through_cs_train_and_stops_at_im_end(tmp_path):
    from cs_lightning.checkpoints import load_module
    from cs_lightning.export import export

    train = jsonl(tmp_path / "d.jsonl", [{**row, "id": f"r{i}"} for i, row in enumerate(MESSAGES * 3)])
    main(["fit", "--model", "cs_lightning.models.ReplyGenerator", "--model.backbone=generic",
          "--model.model_type=qwen2", "--model.pretrained=false", "--model.model_size=tiny",
          "--model.max_new_tokens=4", "--data", "cs_lightning.data.DialogueDataModule", f"--data.train_file={train}",
          "--data.val_fraction=0.25", "--data.prompt_format=chat", "--data.system_prompt=you help shop customers",
          "--data.tokenizer_vocab_size=300", "--data.batch_size=4", "--trainer.max_epochs=1",
          "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--experiment=chat"])
    folder = Path("logs/chat/checkpoints")
    metrics = torch.load(folder / "last.ckpt", map_location="cpu", weights_only=True)
    assert metrics["global_step"] == 2
    callbacks = next(v for k, v in metrics["callbacks"].items() if "Checkpoint" in k)
    assert callbacks["best_model_score"] is not None  # val/loss on whole conversations
    assert (folder / "system_prompt.txt").read_text().strip() == "you help shop customers"
    module, _ = load_module(folder / "last.ckpt", task="reply")
    assert module.chat and module.hparams.system_message == "you help shop customers"
    tok = module.tokenizer
    im_end, eos = tok.convert_tokens_to_ids("<|im_end|>"), tok.eos_token_id
    assert im_end != eos and module.eos_token_ids == [eos, im_end]
    # a head that says "thanks", then <|im_end|>, then would go on saying "thanks": the reply stops at <|im_end|>
    word = tok("thanks", add_special_tokens=False)["input_ids"][0]
    module.model.lm_head = ScriptedHead(len(tok), [word, im_end], after=word)
    module.hparams.no_repeat_ngram_size = 0
    assert module.reply_to([Turn("user", "where is my parcel")]) == tok.decode([word]).strip()
    assert module.model.lm_head.calls == 2  # it stopped at <|im_end|>, with max_new_tokens room left
    out = export(folder / "last.ckpt", Path("hf"))
    info = json.loads((out / "cs_lightning.json").read_text())
    assert info["prompt_format"] == "chat" and info["system_prompt"] == "you help shop customers"
    assert info["end_of_turn"] == "<|im_end|>"
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == [eos, im_end]
