"""Reply generation data: dialogues, one training example per agent turn, and the business rules that go with
them."""

from __future__ import annotations

from pathlib import Path

from cs_lightning.data.base import DEMO_ROOT, CSDataModule
from cs_lightning.data.batching import ReplyCollator, TokenizedDataset
from cs_lightning.data.dialogue import prediction_examples, read_dialogues, reply_examples
from cs_lightning.data.encoding import cached_encode_replies
from cs_lightning.prompts import SPECIAL_MARKERS
from cs_lightning.rules import BusinessRules
from cs_lightning.tokenization import add_marker_tokens


class DialogueDataModule(CSDataModule):
    """Reply generation on the user's dialogue files: JSON Lines of ``{"id", "domain", "turns": [{"role":
    "user"|"agent", "text"}]}``; every agent turn is one example whose context is the turns before it. Validation
    and test carves take whole dialogues, so no conversation is split between training and evaluation.

    Args:
        max_context_tokens: tokens of context at most (newest kept).
        max_reply_tokens: tokens of a target reply at most.
        domain_prefix: start the context with the dialogue's domain (``banking:``).
        rules_file: business rules (YAML/JSON) for generation and evaluation; domain modules default to their own.
        generate_samples: validation/test examples that get a generated reply (a fixed, seeded sample).
        dialogue_format: ``jsonl`` (ours), or read a public dataset as it is: ``sgd`` (Schema-Guided Dialogue files
            or folder), ``crosswoz`` (CrossWOZ json or json.zip).
    """

    task = "reply"

    def __init__(self, max_context_tokens: int = 192, max_reply_tokens: int = 64, domain_prefix: bool = True,
                 rules_file: str | None = None, generate_samples: int = 64, dialogue_format: str = "jsonl",
                 **kwargs):
        if rules_file is None and self.domain is not None and (DEMO_ROOT / self.domain / "rules.yaml").exists():
            rules_file = str(DEMO_ROOT / self.domain / "rules.yaml")
        self.rules_path = rules_file
        self.rules = BusinessRules.load(rules_file) if rules_file else BusinessRules()
        self.dialogue_format = dialogue_format
        super().__init__(**kwargs)

    def demo_folder(self, language: str) -> Path:
        return DEMO_ROOT / self.domain / "dialogues" / language

    def read_files(self) -> None:
        files, fmt = self.files, self.dialogue_format
        if files["train"]:
            train = read_dialogues(files["train"], file_format=fmt)
            self.records["train"] = reply_examples(self.carve(train, lambda d: d.domain or "", reply_examples))
        for split in ("val", "test"):
            if files[split]:
                self.records[split] = reply_examples(read_dialogues(files[split], file_format=fmt))
        if files["predict"]:
            self.records["predict"] = prediction_examples(read_dialogues(files["predict"], require_agent=False,
                                                                         file_format=fmt))

    def training_texts(self) -> list[str]:
        seen, texts = set(), []
        for ex in self.records["train"]:  # each turn once, although it is context of every later reply
            for text in [t.text for t in ex.context] + [ex.reply]:
                if text not in seen:
                    seen.add(text)
                    texts.append(text)
        return texts

    def _resolve_tokenizer(self, tokenizer: str | None) -> str:
        # the speaker markers become special tokens the model learns
        path = super()._resolve_tokenizer(tokenizer)
        return str(add_marker_tokens(path, list(SPECIAL_MARKERS.values()), self.load_tokenizer))

    def encode(self, split: str) -> TokenizedDataset:
        records, hp = self.records[split], self.hparams
        encoded = cached_encode_replies(self.tokenizer, records, self.backbone.reply_kind, hp.max_context_tokens,
                                        hp.max_reply_tokens, hp.max_history_turns, hp.domain_prefix)
        extras = [{"reference": r.reply, "context": r.context, "intent": r.intent} for r in records]
        return TokenizedDataset(encoded, None, [r.id for r in records], extras)

    def collator(self, generation: bool):
        return ReplyCollator(self.tokenizer.pad_token_id, self.backbone.reply_kind, generation, self.padding())

    def eval_loaders(self, split: str):
        # loss and perplexity on every example, generation on a bounded, fixed sample
        return [self.loader(split, shuffle=False),
                self.loader(split, shuffle=False, generation=True, subset=self.hparams.generate_samples)]
