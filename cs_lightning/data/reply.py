"""Reply generation data: dialogues, one training example per agent turn (marker format) or one sequence per
conversation with the loss on every assistant turn (chat format), and the business rules that go with them."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_info

from cs_lightning.data.base import DEMO_ROOT, CSDataModule
from cs_lightning.data.batching import ReplyCollator, TokenizedDataset
from cs_lightning.data.dialogue import prediction_examples, read_dialogues, reply_examples
from cs_lightning.data.encoding import (cached_encode_chat_prompts, cached_encode_conversations,
                                        cached_encode_replies)
from cs_lightning.errors import ConfigError
from cs_lightning.prompts import SPECIAL_MARKERS, ChatPrompt, ChatTemplateError, Turn
from cs_lightning.rules import BusinessRules
from cs_lightning.tokenization import add_marker_tokens

PROMPT_FORMATS = ("auto", "chat", "markers")
_TEMPLATE_FIX = ("set data.prompt_format: markers, or use a tokenizer whose chat template renders each conversation "
                 "as a prefix of its continuation")


def read_system_prompt(value: str | None) -> str | None:
    """``data.system_prompt``: the text itself, or a file holding it (UTF-8); None or blank: none."""
    if value is None or not value.strip():
        return None
    single_line = "\n" not in value.strip() and len(value) < 1024
    try:
        is_file = single_line and Path(value).is_file()
    except OSError:  # text longer than a file name may be (255 bytes: 85 Chinese characters)
        is_file = False
    if is_file:
        text = Path(value).read_text(encoding="utf-8").strip()
        if not text:
            raise ConfigError("data.system_prompt", f"{value} is empty", "write the system prompt in the file")
        return text
    if single_line and value.endswith((".txt", ".md")):
        raise ConfigError("data.system_prompt", f"file {value} not found",
                          "check the path (relative to the working directory), or write the prompt itself")
    return value.strip()


class DialogueDataModule(CSDataModule):
    """Reply generation on the user's dialogue files: JSON Lines of ``{"id", "domain", "turns": [{"role":
    "user"|"agent", "text"}]}`` or of ``{"messages": [{"role": "system"|"user"|"assistant", "content"}]}``.
    In the marker format every agent turn is one example whose context is the turns before it; in the chat format a
    conversation is one sequence in the tokenizer's chat template with the loss on every assistant turn. Validation
    and test carves take whole dialogues, so no conversation is split between training and evaluation.

    Args:
        prompt_format: ``auto`` (chat when the tokenizer has a chat template and the model is causal, else
            markers), ``chat`` (the tokenizer's chat template; a tokenizer trained here gets ChatML) or ``markers``
            (our ``<|user|>``/``<|agent|>`` speaker markers, added to the tokenizer).
        system_prompt: the system message (text, or a file holding it) of every conversation without one of its
            own, in the chat format: who the agent is and the business rules in words. Domain modules default to
            their own (``demo/<domain>/system_prompt.<language>.txt``).
        max_length: chat format: tokens of a training sequence at most (longer conversations are split before a
            user turn, each piece with the system message) and of a generation prompt (oldest turns dropped).
        max_context_tokens: marker format: tokens of context at most (newest kept).
        max_reply_tokens: marker format: tokens of a target reply at most.
        domain_prefix: marker format: start the context with the dialogue's domain (``banking:``).
        rules_file: business rules (YAML/JSON) for generation and evaluation; domain modules default to their own.
        generate_samples: validation/test examples that get a generated reply (a fixed, seeded sample).
        dialogue_format: ``jsonl`` (ours), or read a public dataset as it is: ``sgd`` (Schema-Guided Dialogue files
            or folder), ``crosswoz`` (CrossWOZ json or json.zip).
    """

    task = "reply"

    def __init__(self, prompt_format: str = "auto", system_prompt: str | None = None, max_length: int = 1024,
                 max_context_tokens: int = 192, max_reply_tokens: int = 64, domain_prefix: bool = True,
                 rules_file: str | None = None, generate_samples: int = 64, dialogue_format: str = "jsonl",
                 **kwargs):
        if prompt_format not in PROMPT_FORMATS:
            raise ConfigError("data.prompt_format", f"unknown format {prompt_format!r}",
                              f"use one of {', '.join(PROMPT_FORMATS)}")
        if max_length < 8:
            raise ConfigError("data.max_length", f"must be at least 8 tokens, got {max_length}")
        if rules_file is None and self.domain is not None and (DEMO_ROOT / self.domain / "rules.yaml").exists():
            rules_file = str(DEMO_ROOT / self.domain / "rules.yaml")
        self.rules_path = rules_file
        self.rules = BusinessRules.load(rules_file) if rules_file else BusinessRules()
        self.dialogue_format = dialogue_format
        self._system_prompt_given = read_system_prompt(system_prompt)
        self.conversations: dict[str, list] = {}
        #: the format in use, ``chat`` or ``markers`` (``auto`` resolved), and the system prompt text; both reach the
        #: model through the CLI, so chat, predict and export ask as training did
        self.prompt_format: str = prompt_format
        self.system_prompt: str | None = None
        super().__init__(**kwargs)
        if self.prompt_format == "chat":
            self._check_chat_template()

    def demo_folder(self, language: str) -> Path:
        return DEMO_ROOT / self.domain / "dialogues" / language

    def read_files(self) -> None:
        files, fmt = self.files, self.dialogue_format
        conversations = self.conversations
        if files["train"]:
            train = read_dialogues(files["train"], file_format=fmt)
            conversations["train"] = self.carve(train, lambda d: d.domain or "")  # carved dialogues go to records
            conversations.update({split: self.records[split] for split in ("val", "test") if split in self.records})
        for split in ("val", "test"):
            if files[split]:
                conversations[split] = read_dialogues(files[split], file_format=fmt)
        for split, dialogues in conversations.items():
            self.records[split] = reply_examples(dialogues)
        if files["predict"]:
            self.records["predict"] = prediction_examples(read_dialogues(files["predict"], require_agent=False,
                                                                         file_format=fmt))

    def training_texts(self) -> list[str]:
        seen, texts = set(), []
        systems = [self.system_prompt] + [ex.system for ex in self.records["train"]]
        for ex in self.records["train"]:  # each turn once, although it is context of every later reply
            for text in [t.text for t in ex.context] + [ex.reply]:
                if text not in seen:
                    seen.add(text)
                    texts.append(text)
        if self.prompt_format == "chat":  # the system prompts are part of every sequence
            texts += list(dict.fromkeys(s for s in systems if s and s not in seen))
        return texts

    # ------------------------------------------------------------------ prompt format
    def _resolve_format(self, tokenizer) -> str:
        """``chat`` or ``markers`` for ``data.prompt_format`` and this tokenizer (None: one will be trained)."""
        wanted, kind = self.hparams.prompt_format, self.backbone.reply_kind
        if wanted == "chat" and kind != "causal":
            raise ConfigError("data.prompt_format", f"the chat format needs a causal (decoder) model, and "
                                                    f"{self.backbone.describe()} is {kind}",
                              "use prompt_format: markers (or auto) for sequence-to-sequence models")
        has_template = tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))
        if wanted == "chat" and tokenizer is not None and not has_template:
            raise ConfigError("data.prompt_format", f"the tokenizer of {self.hparams.tokenizer} has no chat template",
                              "use an instruction-tuned model's tokenizer, or prompt_format: markers (or auto)")
        if wanted == "auto":
            return "chat" if has_template and kind == "causal" else "markers"
        return wanted

    def _resolve_system_prompt(self) -> str | None:
        if self._system_prompt_given is not None:
            if self.prompt_format != "chat":
                raise ConfigError("data.system_prompt", "a system prompt needs the chat format, and this run uses "
                                                        "the marker format",
                                  "set data.prompt_format: chat (causal models), or remove data.system_prompt")
            return self._system_prompt_given
        if self.prompt_format == "chat" and self.domain is not None:
            bundled = DEMO_ROOT / self.domain / f"system_prompt.{self.hparams.language}.txt"
            if bundled.is_file():
                return bundled.read_text(encoding="utf-8").strip()
        return None

    def _resolve_tokenizer(self, tokenizer: str | None) -> str:
        given = None
        if tokenizer is not None:
            path = super()._resolve_tokenizer(tokenizer)
            given = self.load_tokenizer(path)
        self.prompt_format = self._resolve_format(given)
        self.system_prompt = self._resolve_system_prompt()
        if given is None:
            kind = self.backbone.tokenizer_kind
            if self.prompt_format == "chat":  # trained offline: ChatML's tokens and template, as Qwen's
                if kind != "bpe":
                    raise ConfigError("data.prompt_format", f"a tokenizer trained for the chat format is a byte-level "
                                                            f"BPE with ChatML, and {self.backbone.describe()} trains "
                                                            f"'{kind}'", "use prompt_format: markers, or give a "
                                                                         "tokenizer with a chat template")
                path = self._train_tokenizer("bpe-chatml")
            else:
                path = super()._resolve_tokenizer(None)
        if self.prompt_format == "chat":
            rank_zero_info(f"Reply prompts: the tokenizer's chat template"
                           + (f", system prompt of {len(self.system_prompt)} characters" if self.system_prompt else
                              ", no system prompt"))
            return path  # a chat model's tokenizer gets no new tokens
        # the speaker markers become special tokens the model learns
        return str(add_marker_tokens(path, list(SPECIAL_MARKERS.values()), self.load_tokenizer))

    def _check_chat_template(self) -> None:
        """Stop at once when the template cannot give the loss mask (rather than at the first batch)."""
        probe = (Turn("user", "Where is my parcel?"), Turn("agent", "It arrives tomorrow."),
                 Turn("user", "Thanks."), Turn("agent", "You are welcome."))
        try:
            ChatPrompt(self.tokenizer, self.system_prompt or "You are a support agent.").encode_conversation(probe)
        except ChatTemplateError as err:
            raise ConfigError("data.prompt_format", f"{err}", _TEMPLATE_FIX) from None

    # ------------------------------------------------------------------ batches
    def encode(self, split: str) -> TokenizedDataset:
        records, hp = self.records[split], self.hparams
        if self.prompt_format == "chat" and split in self.conversations:
            return self._encode_conversations(split)
        extras = [{"reference": r.reply, "context": r.context, "intent": r.intent} for r in records]
        if self.prompt_format == "chat":  # prediction input: the prompts of the next replies
            encoded = self._chat(cached_encode_chat_prompts, records)
            return TokenizedDataset(encoded, None, [r.id for r in records], extras)
        encoded = cached_encode_replies(self.tokenizer, records, self.backbone.reply_kind, hp.max_context_tokens,
                                        hp.max_reply_tokens, hp.max_history_turns, hp.domain_prefix)
        return TokenizedDataset(encoded, None, [r.id for r in records], extras)

    def _chat(self, encode, items) -> dict:
        try:
            return encode(self.tokenizer, items, self.system_prompt, self.hparams.max_length)
        except ChatTemplateError as err:
            raise ConfigError("data.prompt_format", f"{err}", _TEMPLATE_FIX) from None

    def _encode_conversations(self, split: str) -> TokenizedDataset:
        dialogues = self.conversations[split]
        encoded = self._chat(cached_encode_conversations, dialogues)
        index = encoded["dialogue_index"].tolist()
        pieces = Counter(index)
        ids, seen = [], Counter()
        for i in index:  # a dialogue split in pieces: "<id>@1", "<id>@2"...
            seen[i] += 1
            ids.append(dialogues[i].id if pieces[i] == 1 else f"{dialogues[i].id}@{seen[i]}")
        split_count, cut = int(encoded["split"]), int(encoded["truncated"])
        if split_count or cut or len(set(index)) < len(dialogues):
            rank_zero_info(f"{split}: {len(dialogues)} conversations as {len(index)} sequences of at most "
                           f"data.max_length={self.hparams.max_length} tokens; {split_count} split at user turns, "
                           f"{cut} exchange(s) longer than that cut from the left (the reply kept)")
        return TokenizedDataset(encoded, None, ids)

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        # chat format: the loss runs on whole conversations, generation on the prompt of every assistant turn
        if self.prompt_format == "chat":
            for split in ("val", "test"):
                if split in self.datasets and f"{split}_turns" not in self.datasets:
                    records = self.records[split]
                    extras = [{"reference": r.reply, "context": r.context, "intent": r.intent} for r in records]
                    encoded = self._chat(cached_encode_chat_prompts, records)
                    self.datasets[f"{split}_turns"] = TokenizedDataset(encoded, None, [r.id for r in records], extras)

    def collator(self, generation: bool):
        return ReplyCollator(self.tokenizer.pad_token_id, self.backbone.reply_kind, generation, self.padding())

    def eval_loaders(self, split: str):
        # loss and perplexity on every example (chat: every conversation), generation on a bounded, fixed sample
        turns = f"{split}_turns" if self.prompt_format == "chat" else split
        return [self.loader(split, shuffle=False),
                self.loader(turns, shuffle=False, generation=True, subset=self.hparams.generate_samples)]
