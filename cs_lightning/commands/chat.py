"""``cs-chat --ckpt PATH``: talk to a trained reply model in the terminal; it keeps the conversation history and
answers turn by turn. Reads only the checkpoint and the files saved beside it (tokenizer, config, rules); a chat-format
model is asked in its chat template with the system prompt it was trained with, and its reply is printed as it is
generated (greedy decoding; beam search prints the finished reply). The business rules hold while streaming: a token
is shown once chosen, and blocked phrases are ruled out before a token is chosen."""

from __future__ import annotations

import argparse
import sys
import threading

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
        if getattr(model, "chat", False) and model.hparams.num_beams <= 1:
            reply = stream_reply(model, history, settings)
        else:
            reply = model.reply_to(history, domain=domain, **settings)
            print(f"agent: {reply}", flush=True)
        history.append(Turn("agent", reply or "..."))


def stream_reply(model, history: list, settings: dict) -> str:
    """Print the next reply of a chat-format model as its tokens are generated (``generate`` runs in a thread and
    feeds a ``TextIteratorStreamer``; words appear as they are complete, Chinese characters one by one); returns the
    reply as ``reply_to`` gives it (whitespace runs as one space), which the history keeps. An error in the
    generation is raised here, as without streaming."""
    from transformers import TextIteratorStreamer

    streamer = TextIteratorStreamer(model.tokenizer, skip_prompt=True, skip_special_tokens=True)
    result: dict = {}

    def generate() -> None:
        try:
            result["reply"] = model.reply_to(history, **settings, streamer=streamer)
        except BaseException as err:  # noqa: BLE001 - handed to the main thread, which raises it
            result["error"] = err
            streamer.end()  # the loop below stops waiting

    worker = threading.Thread(target=generate, name="cs-chat-generate", daemon=True)
    worker.start()
    print("agent: ", end="", flush=True)
    for piece in streamer:
        print(piece, end="", flush=True)
    worker.join()
    print(flush=True)
    if "error" in result:
        raise result["error"]
    return result["reply"]


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``cs-chat``."""
    parser = argparse.ArgumentParser(prog="cs-chat", description=__doc__)
    parser.add_argument("--ckpt", required=True, help="a reply model checkpoint (logs/<experiment>/checkpoints/...)")
    parser.add_argument("--domain", default=None, help="domain prefix to use (default: the training data's)")
    args = parser.parse_args(argv)
    run_command("cs-chat", lambda: chat(args.ckpt, args.domain))


if __name__ == "__main__":
    main()
