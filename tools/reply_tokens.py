"""Tokens one training epoch processes for reply generation: one example per agent turn (the marker format as
``cs-train`` trains it today: the context truncated to ``data.max_context_tokens``, newest kept, plus the reply up to
``data.max_reply_tokens``) against whole conversations in a chat template (one sequence per conversation, the loss on
every assistant turn, split before a user turn when longer than ``data.max_length``), with one tokenizer for both.

The data is read as the config reads it (``configs/gpt_reply_sgd.yaml``: the SGD subset, ``dialogue_format: sgd``, its
training split) and the tokenizer is the one that config trains (byte-level BPE, ``data.tokenizer_vocab_size``) with
ChatML's ``<|im_start|>``/``<|im_end|>`` and chat template added for the chat encodings; ``--tokenizer`` takes another
(a local folder with a chat template, e.g. Qwen2.5's). Also counted: one example per agent turn in the chat template
with its whole context (what per-turn examples cost without truncation). Prints one JSON line.

    python tools/reply_tokens.py [--config configs/gpt_reply_sgd.yaml] [--tokenizer DIR] [--max_length 1024]
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import yaml


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/gpt_reply_sgd.yaml")
    parser.add_argument("--tokenizer", default=None, help="a tokenizer folder with a chat template (default: the "
                                                          "config's trained tokenizer with ChatML added)")
    parser.add_argument("--max_length", type=int, default=None, help="chat sequences at most (default: the config's "
                                                                     "data.max_length, else 1024)")
    parser.add_argument("--system_prompt", default=None, help="a system message for every conversation")
    args = parser.parse_args()

    from tokenizers import AddedToken

    from cs_lightning.data import DialogueDataModule
    from cs_lightning.data.encoding import encode_replies
    from cs_lightning.prompts import CHATML_TEMPLATE, ChatPrompt, Turn, chat_messages

    started = time.time()
    config = yaml.safe_load(open(args.config, encoding="utf-8"))
    init = dict(config["data"]["init_args"])
    backbone = config["model"]["init_args"].get("backbone", "gpt")
    if args.tokenizer:
        init["tokenizer"] = args.tokenizer
    init.update(prompt_format="markers", val_file=None, test_file=None, val_fraction=0.0, test_fraction=0.0)
    data = DialogueDataModule(backbone=backbone, **init)  # reads the training split, trains the tokenizer
    dialogues, examples = data.conversations["train"], data.records["train"]
    marker_tok = data.tokenizer
    hp = data.hparams
    max_length = args.max_length or init.get("max_length") or 1024

    # one example per agent turn, marker format, as today's encoder builds it
    marker = encode_replies(marker_tok, examples, "causal", hp.max_context_tokens, hp.max_reply_tokens,
                            hp.max_history_turns, hp.domain_prefix)
    lengths = (marker["offsets"][1:] - marker["offsets"][:-1]).tolist()
    per_turn = {"sequences": len(lengths), "tokens": sum(lengths),
                "loss_tokens": sum(n - p for n, p in zip(lengths, marker["prompt_lengths"].tolist())),
                "longest": max(lengths)}

    chat_tok = copy.deepcopy(marker_tok)  # the same vocabulary and merges
    if not getattr(chat_tok, "chat_template", None):
        chat_tok.add_tokens([AddedToken("<|im_start|>", special=True), AddedToken("<|im_end|>", special=True)],
                            special_tokens=True)
        chat_tok.chat_template = CHATML_TEMPLATE
    prompt = ChatPrompt(chat_tok, args.system_prompt, max_length)

    # one sequence per conversation (split at user turns over max_length), the loss on every assistant turn
    pieces = [p for d in dialogues for p in prompt.encode_conversation(d.turns, d.system)]
    whole = {"sequences": len(pieces), "tokens": sum(len(ids) for ids, _ in pieces),
             "loss_tokens": sum(sum(mask) for _, mask in pieces), "longest": max(len(ids) for ids, _ in pieces),
             "conversations_split": prompt.split, "exchanges_cut": prompt.truncated}

    # one example per agent turn in the chat template with its whole context (no truncation)
    full = [len(chat_tok(prompt.render(chat_messages(ex.context + (Turn("agent", ex.reply),),
                                                     ex.system or args.system_prompt)),
                         add_special_tokens=False)["input_ids"]) for ex in examples]
    per_turn_chat = {"sequences": len(full), "tokens": sum(full), "longest": max(full)}

    print(json.dumps({
        "config": args.config, "train_file": init.get("train_file"), "dialogues": len(dialogues),
        "agent_turns": len(examples), "tokenizer": args.tokenizer or f"trained bpe, vocab {len(marker_tok)}",
        "per_turn_markers": dict(per_turn, max_context_tokens=hp.max_context_tokens,
                                 max_reply_tokens=hp.max_reply_tokens, max_history_turns=hp.max_history_turns),
        "whole_conversation_chat": dict(whole, max_length=max_length),
        "per_turn_chat_full_context": per_turn_chat,
        "ratio_per_turn_markers_to_whole": round(per_turn["tokens"] / whole["tokens"], 3),
        "ratio_per_turn_chat_to_whole": round(per_turn_chat["tokens"] / whole["tokens"], 3),
        "seconds": round(time.time() - started, 1)}))


if __name__ == "__main__":
    main()
