"""Exporting a checkpoint to a plain Hugging Face folder (safetensors weights, config, tokenizer).

- Intent models load in ``transformers.pipeline("text-classification", model=OUT_DIR)`` with their label names
  (``id2label``/``label2id``) and predict what the checkpoint predicts.
- Reply models load with ``AutoModelForCausalLM`` / ``AutoModelForSeq2SeqLM`` and the tokenizer; their
  ``generation_config`` carries the checkpoint's decoding settings (and blocked phrases as ``bad_words_ids``), and
  ``cs_lightning.json`` the prompt format, so ``generate`` gives the checkpoint's replies.

A checkpoint that trained adapters (``model.peft``) exports the same way, its adapters merged into the base weights
(peft's ``merge_and_unload``); ``adapter=True`` (``cs-export --adapter``) writes peft's adapter folder instead
(``adapter_config.json``, ``adapter_model.safetensors``, the tokenizer and ``cs_lightning.json`` naming the base), which
``peft.PeftModel.from_pretrained(base_model, folder)`` loads onto the same base weights.

The folder is built under a temporary name and swapped in whole.
"""

from __future__ import annotations

import json
from pathlib import Path

from cs_lightning.checkpoints import load_module
from cs_lightning.errors import ConfigError
from cs_lightning.io import atomic_dir
from cs_lightning.prompts import MARKER_FORMAT, SPECIAL_MARKERS


def export(ckpt_path: str | Path, out_dir: str | Path, adapter: bool = False) -> Path:
    """Write the Hugging Face folder of a checkpoint (adapters merged), or with ``adapter`` its peft adapter folder;
    returns its path."""
    module, data = load_module(ckpt_path, key="ckpt")
    out_dir = Path(out_dir)
    task = getattr(module, "task", "")
    adapters = getattr(module, "adapters", None)
    if adapter and not adapters:
        raise ConfigError("--adapter", f"{ckpt_path} holds a fully fine-tuned model, not adapters",
                          "export it without --adapter")
    if adapter and not adapters["base"]["pretrained"]:
        raise ConfigError("--adapter", f"the base of {ckpt_path} was built from scratch (model.pretrained: false), "
                                       "so there are no base weights to load the adapter onto",
                          "export it without --adapter (adapters merged into the model)")

    def fill(tmp: Path) -> None:
        model = module.model
        if adapter:
            # the base as the user named it (a hub id travels; the resolved local path would not)
            model.peft_config["default"].base_model_name_or_path = adapters["base"]["model_name_or_path"]
        elif adapters:
            model = model.merge_and_unload()  # a plain Hugging Face model with the adapters folded into its weights
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
        if adapter:
            info["adapter"] = adapters  # the method, and the base weights it goes onto (source and sha256)
            if task == "intent":  # the base classifier to build: AutoModelForSequenceClassification(num_labels)
                info["labels"] = list(module.labels)
        if task == "reply":
            info.update(reply_kind=module.backbone.reply_kind, speaker_markers=SPECIAL_MARKERS,
                        prompt_format=MARKER_FORMAT,
                        **{k: data[k] for k in ("max_context_tokens", "max_history_turns", "domain_prefix",
                                                "language") if k in data})
        (tmp / "cs_lightning.json").write_text(json.dumps(info, indent=2, ensure_ascii=False), encoding="utf-8")

    atomic_dir(out_dir, fill)
    return out_dir
