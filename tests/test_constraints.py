"""Blocked phrases: the matcher's semantics, and a generation constraint that holds however the tokenizer splits a
phrase (WordPiece, byte-level BPE, Unigram; English and Chinese; greedy and beam search; mid-sentence).

The generation tests force a tiny random model towards a sentence that contains the blocked phrase, spelled with a
chosen token split. Without the constraint the output contains the phrase (so each test can fail); with it the
output, exactly as generated, has no blocked phrase and goes on past it. Nothing scrubs the text afterwards.
"""

from __future__ import annotations

import pytest
import torch
from transformers import (GPT2Config, GPT2LMHeadModel, LogitsProcessor, LogitsProcessorList,
                          PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration)

from conftest import write
from cs_lightning.constraints import blocked_phrases_processor
from cs_lightning.errors import DataError
from cs_lightning.rules import BusinessRules, PhraseMatcher, canonical
from cs_lightning.tokenization import train_tokenizer

SENTENCES = {
    "en": ("we guaranteed your refund today", "guaranteed", "refund"),
    "zh": ("我们保证您的退款今天到账", "保证", "退款"),
}
CORPUS = [
    "we guaranteed your refund today", "your refund is on its way", "guarantee and guard your order today",
    "the refund arrives in five days", "we are sorry about the delay", "我们保证您的退款今天到账", "您的退款已经到账",
    "保证金会在三天内退还", "我们今天处理您的订单", "请您耐心等待", "refund policy and deposits",
] * 3


# ---------------------------------------------------------------------------------------------------- the matcher
def test_english_phrases_match_whole_words_only():
    m = PhraseMatcher(["guaranteed", "100%", "your fault"])
    assert m.find("It is Guaranteed.") == ["guaranteed"]
    assert m.find("an unguaranteed loan") == [] and m.find("guaranteedly") == []
    assert m.find("100% sure") == ["100%"] and m.find("2100% up") == []  # a digit before it: another number
    assert m.find("it was YOUR   fault") == ["your fault"]  # case and whitespace runs do not matter
    assert m.find("yourfault") == []


def test_chinese_phrases_match_anywhere_and_allow_lists_exceptions():
    m = PhraseMatcher(["保证"], allow=["保证金"])
    assert m.find("我们保证您的退款") == ["保证"]
    assert m.find("保证金会退还") == [] and m.find("我们退还保证金") == []
    assert m.find("保证金和保证") == ["保证"]  # the second one is not inside the allowed phrase
    assert m.find("我们 保 证 您") == ["保证"]  # spaces some tokenizers decode between characters


def test_an_unfinished_text_counts_only_what_no_continuation_can_excuse():
    m = PhraseMatcher(["保证", "guaranteed"], allow=["保证金"])
    assert m.find("我们保证", final=False) == []  # may still become 保证金
    assert m.find("我们保证", final=True) == ["保证"]
    assert m.find("我们保证您", final=False) == ["保证"]
    assert m.find("it is guaranteed", final=False) == []  # may still go on to "guaranteedly"
    assert m.find("it is guaranteed ", final=False) == ["guaranteed"]


def test_rules_files_take_allow_and_check_it():
    rules = BusinessRules.load(write(_tmp() / "r.yaml", "blocked_phrases: [保证]\nallow: [保证金]\n"))
    assert rules.violations("请缴纳保证金") == [] and rules.violations("我保证") == ["blocked_phrase"]
    with pytest.raises(DataError, match="allow.*list of non-empty strings"):
        BusinessRules.load(write(_tmp() / "bad.yaml", "blocked_phrases: [x]\nallow: 3\n"))


def _tmp():
    import tempfile
    from pathlib import Path

    return Path(tempfile.mkdtemp())


# ---------------------------------------------------------------------------------------------------- generation
class Force(LogitsProcessor):
    """Pushes generation towards ``target`` token by token (by position), strongly but not absolutely: a banned
    token gives way to the model's own next choice and the push goes on with the next target token."""

    def __init__(self, target: list[int], prompt_length: int):
        self.target, self.prompt_length = target, prompt_length

    def __call__(self, input_ids, scores):
        step = input_ids.shape[1] - self.prompt_length
        if step < len(self.target):
            scores[:, self.target[step]] += 1000.0
        return scores


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    cache = tmp_path_factory.mktemp("tok")
    return {kind: PreTrainedTokenizerFast.from_pretrained(
        str(train_tokenizer(CORPUS, kind, vocab_size=400, cache_dir=cache))) for kind in ("wordpiece", "bpe", "unigram")}


def _byte_symbols() -> dict[int, str]:
    """The printable symbol the byte-level BPE alphabet uses for each byte (GPT-2's published mapping)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    symbols, extra = {}, 0
    for b in range(256):
        if b in printable:
            symbols[b] = chr(b)
        else:
            symbols[b] = chr(256 + extra)
            extra += 1
    return symbols


def spellings(tok, kind: str, sentence: str, phrase: str) -> dict[str, list[int]]:
    """Token sequences that decode to ``sentence``: the tokenizer's own split, and the phrase split into the smallest
    pieces the vocabulary has (characters; for byte-level BPE, single bytes, which cut Chinese characters apart)."""
    natural = tok(sentence, add_special_tokens=False)["input_ids"]
    before, after = sentence.split(phrase, 1)
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"] if text.strip() else []  # noqa: E731
    vocab = tok.get_vocab()
    pieces = None
    if kind == "bpe":
        symbols = _byte_symbols()
        lead = " " if before.endswith(" ") else ""
        raw = (lead + phrase).encode("utf-8")
        pieces = [vocab[symbols[b]] for b in raw]
        before = before.rstrip(" ") if lead else before
    elif kind == "wordpiece":
        chars = list(phrase)
        names = [chars[0]] + [c if "\u4e00" <= c <= "\u9fff" else "##" + c for c in chars[1:]]
        pieces = [vocab[n] for n in names] if all(n in vocab for n in names) else None
    else:  # unigram: the first character carries the word-start mark when the phrase starts a word
        names = [("▁" + phrase[0]) if before.endswith(" ") or not before else phrase[0]] + list(phrase[1:])
        pieces = [vocab[n] for n in names] if all(n in vocab for n in names) else None
    out = {"natural": natural}
    if pieces is not None:
        split = ids(before) + pieces + ids(after)
        if after.startswith(" ") and kind == "unigram":
            split = ids(before) + pieces + ids(after)
        out["smallest pieces"] = split
    for name, seq in out.items():
        assert canonical(phrase) in canonical(tok.decode(seq)), (name, tok.decode(seq))
    return out


def generate(tok, target: list[int], matcher: PhraseMatcher | None, num_beams: int, seq2seq: bool) -> str:
    torch.manual_seed(0)
    vocab = len(tok)
    if seq2seq:
        model = T5ForConditionalGeneration(T5Config(vocab_size=vocab, d_model=16, d_ff=32, d_kv=8, num_layers=1,
                                                    num_heads=2, decoder_start_token_id=tok.pad_token_id,
                                                    pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id))
        prompt = torch.tensor([[tok.eos_token_id]])
        prompt_length = 1
    else:
        model = GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=16, n_layer=1, n_head=2, n_positions=64,
                                           bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))
        prompt = torch.tensor([[tok.pad_token_id or 0, tok.pad_token_id or 0]])
        prompt_length = prompt.shape[1]
    model.eval()
    eos = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
    # the push ends the reply after the sentence
    processors = LogitsProcessorList([Force(target + [eos], prompt_length)])
    max_new = len(target) + 6
    if matcher is not None:
        processors.append(blocked_phrases_processor(matcher, tok, prompt_length, max_new, eos, num_beams=num_beams))
    with torch.no_grad():
        out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=max_new,
                             num_beams=num_beams, do_sample=False, logits_processor=processors,
                             pad_token_id=tok.pad_token_id, eos_token_id=eos)
    return tok.decode(out[0, prompt_length:], skip_special_tokens=True)


CASES = [(kind, lang, beams) for kind in ("wordpiece", "bpe", "unigram") for lang in ("en", "zh") for beams in (1, 3)]


@pytest.mark.parametrize("kind,lang,beams", CASES, ids=[f"{k}-{l}-beams{b}" for k, l, b in CASES])
def test_a_blocked_phrase_cannot_be_generated_however_it_is_split(tokenizers, kind, lang, beams):
    tok = tokenizers[kind]
    sentence, phrase, later = SENTENCES[lang]
    matcher = PhraseMatcher([phrase])
    for name, target in spellings(tok, kind, sentence, phrase).items():
        free = generate(tok, target, None, beams, seq2seq=kind == "unigram")
        assert matcher.find(free), (name, free)  # the push works: without the constraint the phrase comes out
        constrained = generate(tok, target, matcher, beams, seq2seq=kind == "unigram")
        assert matcher.find(constrained) == [], (name, constrained)
        assert canonical(later) in canonical(constrained), (name, constrained)  # and the reply went on past it


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_an_allowed_phrase_that_contains_a_blocked_one_is_still_generated(tokenizers, kind):
    tok = tokenizers[kind]
    matcher = PhraseMatcher(["保证"], allow=["保证金"])
    target = tok("保证金会在三天内退还", add_special_tokens=False)["input_ids"]
    out = generate(tok, target, matcher, 1, seq2seq=kind == "unigram")
    assert "保证金" in canonical(out) and matcher.find(out) == []
    english = PhraseMatcher(["guarantee"])  # whole words: "guarantee" is blocked, a longer word is not
    target = tok("guaranteed your refund", add_special_tokens=False)["input_ids"]
    assert "guaranteed" in canonical(generate(tok, target, english, 1, seq2seq=kind == "unigram"))
