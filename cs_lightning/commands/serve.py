"""``cs-serve --intent DIR [--reply DIR]``: serve an intent export, a reply export, or both, from one process:
``POST /v1/intent``, ``POST /v1/chat/completions`` (OpenAI-compatible), ``GET /health``, ``GET /metrics``, and a chat
page at ``GET /``.
Binds 127.0.0.1 unless given an API key; SIGTERM finishes the requests in flight and exits 0."""

from __future__ import annotations

import argparse
import os

from cs_lightning.commands import run_command


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``cs-serve``."""
    from cs_lightning.serving.server import API_KEY_ENV

    parser = argparse.ArgumentParser(prog="cs-serve", description=__doc__.split("\n")[0])
    parser.add_argument("--intent", metavar="DIR", help="an intent export (cs-export): POST /v1/intent")
    parser.add_argument("--reply", metavar="DIR", help="a reply export (cs-export): POST /v1/chat/completions")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1; any other needs --api-key)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    parser.add_argument("--onnx", action="store_true",
                        help="run the intent export's ONNX file with ONNX Runtime (cs-export --onnx writes it)")
    parser.add_argument("--api-key", default=os.environ.get(API_KEY_ENV),
                        help=f"required as 'Authorization: Bearer KEY' or 'X-API-Key: KEY' on every endpoint but "
                             f"/health (default: ${API_KEY_ENV})")
    parser.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu or cuda")
    parser.add_argument("--max-batch-size", type=int, default=32, help="intent texts per model call at most (32)")
    parser.add_argument("--batch-timeout", type=float, default=0.005,
                        help="seconds an intent batch waits for more texts after its first (0.005)")
    parser.add_argument("--max-chars", type=int, default=2000, help="longest text or message accepted (2000)")
    parser.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body (1048576)")
    parser.add_argument("--rules", metavar="FILE",
                        help="business rules for replies instead of the export's (exports without rules have none)")
    parser.add_argument("--domain", help="domain prefix of marker-format prompts (as cs-chat --domain)")
    parser.add_argument("--graceful-timeout", type=float, default=30.0,
                        help="seconds SIGTERM waits for requests in flight (30)")
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    for name in ("max_batch_size", "max_chars", "max_body_bytes"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.batch_timeout < 0:
        parser.error("--batch-timeout must be 0 or more")

    def body() -> int:
        from transformers.utils import logging as hf_logging

        from cs_lightning.serving.server import serve

        hf_logging.disable_progress_bar()  # a bar per weights file says nothing here: /health says when ready

        return serve(args.intent, args.reply, host=args.host, port=args.port, onnx=args.onnx, api_key=args.api_key,
                     device=args.device, max_batch_size=args.max_batch_size, batch_timeout=args.batch_timeout,
                     max_chars=args.max_chars, max_body_bytes=args.max_body_bytes, rules=args.rules,
                     domain=args.domain, graceful_timeout=args.graceful_timeout, log_level=args.log_level)

    run_command("cs-serve", body)


if __name__ == "__main__":
    main()
