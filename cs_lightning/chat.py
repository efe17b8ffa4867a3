"""``cs-chat --ckpt PATH``: talk to a trained reply model in the terminal; it keeps the conversation history and
answers turn by turn. Reads only the checkpoint and the files saved beside it (tokenizer, config, rules)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from cs_lightning.errors import ConfigError, CSLightningError


def load_for_inference(ckpt_path: str | Path, model_class=None):
    """A model from a cs-lightning checkpoint, built from the artifacts saved beside it (no original sources
    needed), in eval mode, with the data settings it was trained with."""
    from cs_lightning.models import ReplyGenerator

    ckpt_path = Path(ckpt_path)
    if not ckpt_path.is_file():
        raise ConfigError("--ckpt", f"checkpoint {ckpt_path} not found", "give the path of a .ckpt file from logs/")
    folder = ckpt_path.parent
    raw = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    overrides = {}
    if (folder / "tokenizer").is_dir():
        overrides["tokenizer_path"] = str(folder / "tokenizer")
    if (folder / "config.json").is_file():
        overrides.update(model_name_or_path=str(folder), pretrained=False)
    if (folder / "rules.yaml").is_file() and "rules_path" in raw.get("hyper_parameters", {}):
        overrides["rules_path"] = str(folder / "rules.yaml")
    model_class = model_class or ReplyGenerator
    model = model_class.load_from_checkpoint(ckpt_path, map_location="cpu", weights_only=True, **overrides)
    model.eval()
    return model, raw.get("datamodule_hyper_parameters", {})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="cs-chat", description=__doc__)
    parser.add_argument("--ckpt", required=True, help="a reply model checkpoint (logs/<experiment>/checkpoints/...)")
    parser.add_argument("--domain", default=None, help="domain prefix to use (default: the training data's)")
    args = parser.parse_args(argv)
    from cs_lightning.data.schema import Turn

    try:
        model, data = load_for_inference(args.ckpt)
    except CSLightningError as err:
        print(f"cs-chat: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    settings = {k: data[k] for k in ("max_context_tokens", "max_history_turns", "domain_prefix") if k in data}
    domain = args.domain
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


if __name__ == "__main__":
    main()
