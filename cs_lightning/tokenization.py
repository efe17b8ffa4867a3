"""Tokenizers trained on the user's own texts, for runs without a pretrained tokenizer (from-scratch models,
Chinese data with no Chinese vocabulary at hand).

A trained tokenizer is cached under a hash of everything that determines it (kind, size, settings, the texts), so
every rank of a distributed run and every later run gets the same files; it is built in a temporary folder under a
file lock and renamed into place, so a crash never leaves half a tokenizer that looks valid.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable, Sequence

from cs_lightning.io import build_dir_once
from cs_lightning.prompts import CHATML_TEMPLATE, CJK

_VERSION = "2"  # bump when the recipe below changes, so caches are rebuilt

# Kinds "<model>-<template>" put the special tokens and the post-processor of another family around a BPE or
# Unigram vocabulary: what a family's heads read (RoBERTa/XLM-R/BART classifiers read <s>, BART's reads the last
# </s>; DeBERTa-v2 and ModernBERT read [CLS]). The plain kinds keep their own: [CLS]/[SEP] (wordpiece), none (bpe,
# GPT), "$A </s>" (unigram, T5).
TEMPLATES = {
    "roberta": dict(specials=["<s>", "<pad>", "</s>", "<unk>", "<mask>"], single="<s> $A </s>",
                    pair="<s> $A </s> </s> $B </s>",
                    tokens=dict(bos_token="<s>", eos_token="</s>", cls_token="<s>", sep_token="</s>",
                                unk_token="<unk>", pad_token="<pad>", mask_token="<mask>")),
    "bert": dict(specials=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], single="[CLS] $A [SEP]",
                 pair="[CLS] $A [SEP] $B [SEP]",
                 tokens=dict(bos_token="[CLS]", eos_token="[SEP]", cls_token="[CLS]", sep_token="[SEP]",
                             unk_token="[UNK]", pad_token="[PAD]", mask_token="[MASK]")),
}
# "bpe-chatml": GPT's byte-level BPE with ChatML's <|im_start|> and <|im_end|> among its special tokens and ChatML as
# its chat template (prompts.CHATML_TEMPLATE), for chat-format reply models built from scratch; EOS stays
# <|endoftext|> (as Qwen2.5's base models), so generation stops at <|im_end|> as the template's end of turn.
CHATML = dict(specials=["<|endoftext|>", "<pad>", "<|im_start|>", "<|im_end|>"],
              tokens=dict(bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>",
                          pad_token="<pad>", additional_special_tokens=["<|im_start|>", "<|im_end|>"]))
KINDS = (("wordpiece", "bpe", "unigram") + tuple(f"{m}-{t}" for m in ("bpe", "unigram") for t in TEMPLATES)
         + ("bpe-chatml",))


def cache_root() -> Path:
    """``$CS_LIGHTNING_CACHE``, else ``~/.cache/cs_lightning``."""
    return Path(os.environ.get("CS_LIGHTNING_CACHE", Path.home() / ".cache" / "cs_lightning"))


def content_key(*parts) -> str:
    """A short stable hash of JSON-serialisable parts (texts, settings)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(json.dumps(part, ensure_ascii=False, sort_keys=True).encode("utf-8"))
        digest.update(b"\x00")
    return digest.hexdigest()[:20]


def _build(kind: str, texts: Sequence[str], vocab_size: int, lowercase: bool):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    if kind not in KINDS:
        raise ValueError(f"unknown tokenizer kind {kind!r}; choose one of {KINDS}")
    model, _, template = kind.partition("-")
    spec = TEMPLATES.get(template)
    cjk = pre_tokenizers.Split(Regex(f"[{CJK}]"), behavior="isolated")  # one token per Chinese character at least
    if kind == "wordpiece":
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase, handle_chinese_chars=True, strip_accents=None)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials, min_frequency=1)
        tok.train_from_iterator(texts, trainer, length=len(texts))
        cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
        tok.decoder = decoders.WordPiece()
        kwargs = dict(unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                      model_input_names=["input_ids", "token_type_ids", "attention_mask"])
    elif model == "bpe":
        chat = template == "chatml"
        specials = spec["specials"] if spec else CHATML["specials"] if chat else ["<|endoftext|>", "<pad>"]
        tok = Tokenizer(models.BPE())
        tok.normalizer = normalizers.Sequence([normalizers.NFKC()] + ([normalizers.Lowercase()] if lowercase else []))
        tok.pre_tokenizer = pre_tokenizers.Sequence([cjk, pre_tokenizers.ByteLevel(add_prefix_space=False)])
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(texts, trainer, length=len(texts))
        tok.decoder = decoders.ByteLevel()
        kwargs = dict(bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>", pad_token="<pad>")
        if chat:
            kwargs = dict(CHATML["tokens"], chat_template=CHATML_TEMPLATE)
    else:  # unigram
        specials = spec["specials"] if spec else ["<pad>", "</s>", "<unk>"]
        unk = spec["tokens"]["unk_token"] if spec else "<unk>"
        tok = Tokenizer(models.Unigram())
        tok.normalizer = normalizers.Sequence([normalizers.NFKC()] + ([normalizers.Lowercase()] if lowercase else []))
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Metaspace(prepend_scheme="first"), cjk])
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials, unk_token=unk)
        tok.train_from_iterator(texts, trainer, length=len(texts))
        if not spec:
            eos = tok.token_to_id("</s>")
            tok.post_processor = processors.TemplateProcessing(
                single="$A </s>", pair="$A </s> $B:1 </s>:1", special_tokens=[("</s>", eos)])
        tok.decoder = decoders.Metaspace()
        kwargs = dict(eos_token="</s>", unk_token="<unk>", pad_token="<pad>")
    if spec:
        used = [t for t in spec["specials"] if t in spec["single"] or t in spec["pair"]]
        tok.post_processor = processors.TemplateProcessing(single=spec["single"], pair=spec["pair"],
                                                           special_tokens=[(t, tok.token_to_id(t)) for t in used])
        kwargs = dict(spec["tokens"])
    return tok, kwargs


def train_tokenizer(texts: Iterable[str], kind: str, vocab_size: int = 8000, lowercase: bool = True,
                    cache_dir: str | Path | None = None) -> Path:
    """Train (or find in the cache) a tokenizer on ``texts`` and return the folder holding its files.

    Args:
        texts: the training texts (each once is enough; order matters for the cache key only).
        kind: ``wordpiece`` (BERT), ``bpe`` (byte-level, GPT) or ``unigram`` (T5); ``bpe-roberta``,
            ``unigram-roberta``, ``bpe-bert`` and ``unigram-bert`` put RoBERTa's ``<s> $A </s>`` or BERT's
            ``[CLS] $A [SEP]`` around a BPE or Unigram vocabulary (see :data:`TEMPLATES`); ``bpe-chatml`` is the
            BPE with ChatML's special tokens and chat template (:data:`CHATML`).
        vocab_size: the largest vocabulary to learn; small corpora give fewer tokens.
        lowercase: fold case before tokenizing.
        cache_dir: where cached tokenizers live (default: :func:`cache_root` / tokenizers).
    """
    texts = list(texts)
    key = content_key(_VERSION, kind, vocab_size, lowercase, texts)
    target = Path(cache_dir or cache_root() / "tokenizers") / f"{kind}-{key}"

    def build(tmp: Path) -> None:
        from transformers import PreTrainedTokenizerFast

        tok, kwargs = _build(kind, texts, vocab_size, lowercase)
        kwargs.setdefault("model_input_names", ["input_ids", "attention_mask"])
        PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs).save_pretrained(str(tmp))

    return build_dir_once(target, build)


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of what decides the token ids: the tokenizer's vocabulary, rules and special tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        spec.pop("truncation", None)
        spec.pop("padding", None)
        text = json.dumps(spec, sort_keys=True, ensure_ascii=False)
    else:  # a slow tokenizer: its vocabulary is the best we have
        text = json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False)
    return hashlib.sha256((type(tokenizer).__name__ + text).encode("utf-8")).hexdigest()[:20]


def add_marker_tokens(path: str, markers: Sequence[str], load) -> str:
    """The tokenizer at ``path`` with ``markers`` as special tokens: ``path`` itself when it has them, else a
    cached copy (content-hash key, built under a lock and renamed into place). ``load`` loads a tokenizer."""
    tokenizer = load(path)
    vocab = tokenizer.get_vocab()
    if all(m in vocab for m in markers):
        return path
    target = cache_root() / "tokenizers" / f"markers-{content_key(tokenizer_fingerprint(tokenizer), list(markers))}"

    def build(tmp: Path) -> None:
        tokenizer.add_special_tokens({"additional_special_tokens": list(markers)})
        tokenizer.save_pretrained(str(tmp))

    return str(build_dir_once(target, build))
