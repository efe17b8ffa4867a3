"""``cs-export CKPT OUT_DIR``: a checkpoint to a plain Hugging Face folder (safetensors weights, config, tokenizer,
and ``cs_lightning.json``; adapters merged); ``cs-export --adapter CKPT OUT_DIR``: an adapter checkpoint to a peft
adapter folder; see :mod:`cs_lightning.export` for what the folders hold."""

from __future__ import annotations

import argparse

from cs_lightning.commands import run_command


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``cs-export``."""
    parser = argparse.ArgumentParser(prog="cs-export", description=__doc__.splitlines()[0])
    parser.add_argument("ckpt", help="a checkpoint from logs/<experiment>/checkpoints/")
    parser.add_argument("out_dir", help="the Hugging Face folder to write (replaced whole)")
    parser.add_argument("--adapter", action="store_true",
                        help="write the adapters of a model.peft checkpoint as a peft adapter folder "
                             "(PeftModel.from_pretrained(base, OUT_DIR)) instead of merging them into the model")
    args = parser.parse_args(argv)

    def body() -> None:
        from transformers.utils import logging as hf_logging

        from cs_lightning.export import export

        hf_logging.disable_progress_bar()  # a bar per weights file says nothing here: the folder appears whole

        print(f"cs-export: wrote {export(args.ckpt, args.out_dir, adapter=args.adapter)}")

    run_command("cs-export", body)


if __name__ == "__main__":
    main()
