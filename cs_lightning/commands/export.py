"""``cs-export CKPT OUT_DIR``: a checkpoint to a plain Hugging Face folder (safetensors weights, config, tokenizer,
and ``cs_lightning.json``; adapters merged); ``cs-export --adapter CKPT OUT_DIR``: an adapter checkpoint to a peft
adapter folder; ``cs-export --onnx [--quantize int8] CKPT OUT_DIR``: an intent model also as ONNX, checked against
the checkpoint on its validation split; see :mod:`cs_lightning.export` for what the folders hold."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from cs_lightning.commands import run_command


def check_batches(ckpt: str, check_file: str | None, examples: int) -> tuple[list[dict] | None, str]:
    """Batches of model inputs for the ONNX self-check, tokenized as the checkpoint's data module tokenizes them:
    a seeded sample of ``examples`` from ``check_file`` (any intent file, labels not needed) or else from the
    validation split the checkpoint trained with (its files read again, carved as at training), with where they
    come from (``val``, ``file PATH``). Returns ``(None, why)`` when the validation data cannot be read here."""
    from cs_lightning.checkpoints import read_checkpoint
    from cs_lightning.errors import CSLightningError

    raw = read_checkpoint(ckpt, "ckpt", mmap=True)
    init = {k: v for k, v in (raw.get("datamodule_hyper_parameters") or {}).items() if not k.startswith("_")}
    path = (raw.get("datamodule_hyper_parameters") or {}).get("_class_path", "cs_lightning.data.IntentDataModule")
    hparams = raw.get("hyper_parameters", {})
    tokenizer = Path(ckpt).parent / "tokenizer"
    if tokenizer.is_dir():
        init["tokenizer"] = str(tokenizer)
    init.update(trained_labels=list(hparams.get("labels") or []), trained_label_counts=hparams.get("label_counts"))
    if check_file:
        init.update(train_file=None, val_file=None, test_file=None, predict_file=check_file)
        split, source = "predict", f"file {check_file}"
    else:
        split, source = "val", "val"
    try:
        module, _, name = path.rpartition(".")
        datamodule = getattr(importlib.import_module(module), name)(**init)
        if split not in datamodule.records:
            return None, "no validation split"
        loader = datamodule.loader(split, shuffle=False, subset=examples)
    except CSLightningError as err:
        if check_file:
            raise
        return None, str(err)
    except (OSError, ImportError, AttributeError, TypeError) as err:
        if check_file:
            raise
        return None, f"{type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''}"
    keep = ("input_ids", "attention_mask", "token_type_ids")
    return [{k: v for k, v in batch.items() if k in keep} for batch in loader], source


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``cs-export``."""
    parser = argparse.ArgumentParser(prog="cs-export", description=__doc__.splitlines()[0])
    parser.add_argument("ckpt", help="a checkpoint from logs/<experiment>/checkpoints/")
    parser.add_argument("out_dir", help="the Hugging Face folder to write (replaced whole)")
    parser.add_argument("--adapter", action="store_true",
                        help="write the adapters of a model.peft checkpoint as a peft adapter folder "
                             "(PeftModel.from_pretrained(base, OUT_DIR)) instead of merging them into the model")
    parser.add_argument("--onnx", action="store_true",
                        help="intent models: also write model.onnx (onnxruntime), checked against the checkpoint "
                             "(needs the onnx extra: pip install 'cs-lightning[onnx]')")
    parser.add_argument("--quantize", choices=["int8"], default=None,
                        help="with --onnx: int8 weights (onnxruntime dynamic quantization), as model.int8.onnx")
    parser.add_argument("--check-file", default=None,
                        help="with --onnx: run the self-check on this intent file instead of the validation split")
    parser.add_argument("--check-examples", type=int, default=256,
                        help="with --onnx: examples the self-check compares (default 256)")
    args = parser.parse_args(argv)

    def body() -> None:
        from transformers.utils import logging as hf_logging

        from cs_lightning.errors import ConfigError
        from cs_lightning.export import export

        hf_logging.disable_progress_bar()  # a bar per weights file says nothing here: the folder appears whole
        if (args.check_file or args.quantize) and not args.onnx:
            raise ConfigError("--check-file" if args.check_file else "--quantize", "applies to the ONNX export",
                              "add --onnx")
        batches, source = None, None
        if args.onnx and not args.adapter:
            from cs_lightning.checkpoints import check_task, read_checkpoint

            # a reply checkpoint is refused by export() with its own line; only intent data is read here
            raw = read_checkpoint(args.ckpt, "ckpt", mmap=True)
            try:
                check_task(raw, "intent", args.ckpt, "ckpt")
            except ConfigError:
                pass
            else:
                batches, source = check_batches(args.ckpt, args.check_file, args.check_examples)
                if batches is None:
                    print(f"cs-export: the validation data cannot be read here ({source}); the ONNX check runs on "
                          "built-in sample texts (--check-file FILE for your own)")
                    source = None
        out = export(args.ckpt, args.out_dir, adapter=args.adapter, onnx=args.onnx, quantize=args.quantize,
                     check_batches=batches, check_source=source)
        print(f"cs-export: wrote {out}")
        if args.onnx:
            from cs_lightning.export import read_export

            onnx = read_export(out)["onnx"]
            check = onnx["check"]
            print(f"cs-export: {onnx['file']} against the checkpoint on {check['examples']} examples "
                  f"({check['split']}): largest logit "
                  f"difference {check['max_abs_logit_diff']:.2g}, label agreement {check['label_agreement']:.4f}")

    run_command("cs-export", body)


if __name__ == "__main__":
    main()
