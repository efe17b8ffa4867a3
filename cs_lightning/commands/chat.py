"""``cs-chat --ckpt PATH``: talk to a trained reply model in the terminal; it keeps the conversation history and
answers turn by turn. Reads only the checkpoint and the files saved beside it (tokenizer, config, rules); a chat-format
model is asked in its chat template with the system prompt it was trained with."""

from __future__ import annotations

import argparse
import sys

from cs_lightning.commands import run_command


def chat(ckpt: str, domain: str | None) -> None:
    """Load the reply model of ``ckpt`` and answer the lines of standard input until ``/quit`` or its end."""
    from cs_lightning.checkpoints import load_module
    from cs_lightning.prompts import Turn

    model, data = load_module(ckpt, task="reply", key="--ckpt")
    settings = {k: data[k] for k in ("max_context_tokens", "max_history_turns", "domain_prefix", "max_length")
                if k in data}  # chat format: the system prompt travels in the checkpoint's model settings
    print("cs-chat: type a message; /reset starts over, /quit (or Ctrl-D) leaves.", flush=True)
    history: list[Turn] = []
    for line in sys.stdin:
        text = " ".join(line.split())
        if not text:
            continue
        if text == "/quit":
            break
        if text == "/reset":
            history = []
            print("(new conversation)", flush=True)
            continue
        history.append(Turn("user", text))
        reply = model.reply_to(history, domain=domain, **settings)
        history.append(Turn("agent", reply or "..."))
        print(f"agent: {reply}", flush=True)


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``cs-chat``."""
    parser = argparse.ArgumentParser(prog="cs-chat", description=__doc__)
    parser.add_argument("--ckpt", required=True, help="a reply model checkpoint (logs/<experiment>/checkpoints/...)")
    parser.add_argument("--domain", default=None, help="domain prefix to use (default: the training data's)")
    args = parser.parse_args(argv)
    run_command("cs-chat", lambda: chat(args.ckpt, args.domain))


if __name__ == "__main__":
    main()
