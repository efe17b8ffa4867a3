"""Tokenizers trained on the user's texts: cached by content, reloadable, Chinese-aware."""

import pytest
from transformers import AutoTokenizer

from cs_lightning.tokenization import add_marker_tokens, train_tokenizer

TEXTS = ["Where is my parcel?", "I want a refund for order 5521", "退款什么时候到账", "快递三天了还没到",
         "Can I change my delivery address", "我想修改收货地址"] * 4


@pytest.mark.parametrize("kind", ["wordpiece", "bpe", "unigram"])
def test_train_reload_and_round_trip(kind):
    path = train_tokenizer(TEXTS, kind, vocab_size=400, lowercase=False)
    assert train_tokenizer(TEXTS, kind, vocab_size=400, lowercase=False) == path  # cached, same folder
    tok = AutoTokenizer.from_pretrained(str(path))
    assert tok.pad_token is not None
    ids = tok("我想修改收货地址", add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in ids
    decoded = tok.decode(ids).replace(" ", "")
    assert decoded == "我想修改收货地址"
    if kind != "wordpiece":  # case is kept when asked
        assert tok.decode(tok("Where is my parcel?", add_special_tokens=False)["input_ids"]).strip() == \
            "Where is my parcel?"


def test_different_texts_give_a_different_tokenizer():
    assert train_tokenizer(TEXTS, "bpe", 300) != train_tokenizer(TEXTS[:-1], "bpe", 300)


def test_marker_tokens_are_added_once_and_cached():
    path = str(train_tokenizer(TEXTS, "bpe", 300))
    marked = add_marker_tokens(path, ["<|user|>", "<|agent|>"], AutoTokenizer.from_pretrained)
    assert marked != path
    tok = AutoTokenizer.from_pretrained(marked)
    assert tok("<|user|> hi", add_special_tokens=False)["input_ids"][0] == tok.convert_tokens_to_ids("<|user|>")
    assert add_marker_tokens(marked, ["<|user|>", "<|agent|>"], AutoTokenizer.from_pretrained) == marked
