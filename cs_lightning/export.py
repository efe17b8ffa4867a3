"""``cs-export CKPT OUT_DIR``: a checkpoint to a plain Hugging Face folder (safetensors weights, config, tokenizer).

- Intent models load in ``transformers.pipeline("text-classification", model=OUT_DIR)`` with their label names
  (``id2label``/``label2id``) and predict what the checkpoint predicts.
- Reply models load with ``AutoModelForCausalLM`` / ``AutoModelForSeq2SeqLM`` and the tokenizer; their
  ``generation_config`` carries the checkpoint's decoding settings (and blocked phrases as ``bad_words_ids``), and
  ``cs_lightning.json`` the prompt format, so ``generate`` gives the checkpoint's replies.

The folder is built under a temporary name and swapped in whole.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

import torch

from cs_lightning.callbacks.artifacts import replace_dir
from cs_lightning.errors import ConfigError, CSLightningError


def _model_class(raw: dict):
    info = raw.get("cs_lightning") or {}
    path = info.get("class_path")
    if path is None:  # checkpoints written before the class was recorded
        hparams = raw.get("hyper_parameters", {})
        path = ("cs_lightning.models.IntentClassifier" if "labels" in hparams else "cs_lightning.models.ReplyGenerator")
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def load_checkpoint(ckpt_path: str | Path):
    """The LightningModule of a cs-lightning checkpoint, built from the files saved beside it (tokenizer, config,
    rules) so the original sources are not needed; in eval mode. Returns ``(module, datamodule_hparams)``."""
    ckpt_path = Path(ckpt_path)
    if not ckpt_path.is_file():
        raise ConfigError("ckpt", f"checkpoint {ckpt_path} not found", "give the path of a .ckpt file from logs/")
    raw = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    folder = ckpt_path.parent
    hparams = raw.get("hyper_parameters", {})
    overrides = {}
    if (folder / "tokenizer").is_dir():
        overrides["tokenizer_path"] = str(folder / "tokenizer")
    if (folder / "config.json").is_file():
        overrides.update(model_name_or_path=str(folder), pretrained=False)
    if (folder / "rules.yaml").is_file() and "rules_path" in hparams:
        overrides["rules_path"] = str(folder / "rules.yaml")
    module = _model_class(raw).load_from_checkpoint(ckpt_path, map_location="cpu", weights_only=True, **overrides)
    module.eval()
    return module, raw.get("datamodule_hyper_parameters", {})


def export(ckpt_path: str | Path, out_dir: str | Path) -> Path:
    """Write the Hugging Face folder of a checkpoint; returns its path."""
    module, data = load_checkpoint(ckpt_path)
    out_dir = Path(out_dir)
    task = getattr(module, "task", "")

    def fill(tmp: Path) -> None:
        model = module.model
        if task == "reply":
            hp = module.hparams
            gen = model.generation_config
            gen.max_new_tokens, gen.num_beams = hp.max_new_tokens, hp.num_beams
            gen.no_repeat_ngram_size = hp.no_repeat_ngram_size or None
            gen.repetition_penalty, gen.do_sample = hp.repetition_penalty, False
            gen.pad_token_id, gen.eos_token_id = module.tokenizer.pad_token_id, module.tokenizer.eos_token_id
            gen.bad_words_ids = module.bad_words_ids or None
        model.save_pretrained(str(tmp), safe_serialization=True)
        module.tokenizer.save_pretrained(str(tmp))
        info = {"task": task, "backbone": module.hparams.backbone, "exported_from": str(Path(ckpt_path).resolve())}
        if task == "reply":
            from cs_lightning.data.dialogue import SPECIAL_MARKERS

            info.update(reply_kind=module.backbone.reply_kind, speaker_markers=SPECIAL_MARKERS,
                        prompt_format="[<domain>:]<|user|> text<|agent|> text<|user|> text<|agent|> (no spaces "
                                      "around the markers; cs_lightning.data.encoding.encode_replies builds it)",
                        **{k: data[k] for k in ("max_context_tokens", "max_history_turns", "domain_prefix",
                                                "language") if k in data})
        (tmp / "cs_lightning.json").write_text(json.dumps(info, indent=2, ensure_ascii=False), encoding="utf-8")

    replace_dir(out_dir, fill)
    return out_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="cs-export", description=__doc__.splitlines()[0])
    parser.add_argument("ckpt", help="a checkpoint from logs/<experiment>/checkpoints/")
    parser.add_argument("out_dir", help="the Hugging Face folder to write")
    args = parser.parse_args(argv)
    try:
        path = export(args.ckpt, args.out_dir)
    except CSLightningError as err:
        print(f"cs-export: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"cs-export: wrote {path}")


if __name__ == "__main__":
    main()
