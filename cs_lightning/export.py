"""Exporting a checkpoint to a plain Hugging Face folder (safetensors weights, config, tokenizer).

- Intent models load in ``transformers.pipeline("text-classification", model=OUT_DIR)`` with their label names
  (``id2label``/``label2id``) and predict what the checkpoint predicts.
- Reply models load with ``AutoModelForCausalLM`` / ``AutoModelForSeq2SeqLM`` and the tokenizer; their
  ``generation_config`` carries the checkpoint's decoding settings (and blocked phrases as ``bad_words_ids``), and
  ``cs_lightning.json`` the prompt format, so ``generate`` gives the checkpoint's replies.

The folder is built under a temporary name and swapped in whole.
"""

from __future__ import annotations

import json
from pathlib import Path

from cs_lightning.checkpoints import load_module
from cs_lightning.io import atomic_dir
from cs_lightning.prompts import MARKER_FORMAT, SPECIAL_MARKERS


def export(ckpt_path: str | Path, out_dir: str | Path) -> Path:
    """Write the Hugging Face folder of a checkpoint; returns its path."""
    module, data = load_module(ckpt_path, key="ckpt")
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
            info.update(reply_kind=module.backbone.reply_kind, speaker_markers=SPECIAL_MARKERS,
                        prompt_format=MARKER_FORMAT,
                        **{k: data[k] for k in ("max_context_tokens", "max_history_turns", "domain_prefix",
                                                "language") if k in data})
        (tmp / "cs_lightning.json").write_text(json.dumps(info, indent=2, ensure_ascii=False), encoding="utf-8")

    atomic_dir(out_dir, fill)
    return out_dir
