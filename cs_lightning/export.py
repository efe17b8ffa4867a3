"""Exporting a checkpoint to a plain Hugging Face folder (safetensors weights, config, tokenizer).

- Intent models load in ``transformers.pipeline("text-classification", model=OUT_DIR)`` with their label names
  (``id2label``/``label2id``) and predict what the checkpoint predicts.
- Reply models load with ``AutoModelForCausalLM`` / ``AutoModelForSeq2SeqLM`` and the tokenizer; their
  ``generation_config`` carries the checkpoint's decoding settings (and blocked phrases as ``bad_words_ids``), and
  ``cs_lightning.json`` the prompt format, so ``generate`` gives the checkpoint's replies. In the chat format the
  tokenizer carries the chat template, ``cs_lightning.json`` the system prompt the model was trained with, and
  ``generation_config`` stops at the template's end-of-turn token as well as EOS.

A checkpoint that trained adapters (``model.peft``) exports the same way, its adapters merged into the base weights
(peft's ``merge_and_unload``); ``adapter=True`` (``cs-export --adapter``) writes peft's adapter folder instead
(``adapter_config.json``, ``adapter_model.safetensors``, the tokenizer and ``cs_lightning.json`` naming the base), which
``peft.PeftModel.from_pretrained(base_model, folder)`` loads onto the same base weights.

Every folder holds ``cs_lightning.json``, everything serving needs beside the weights (:data:`FORMAT_VERSION` 2):
``format_version``, ``cs_lightning_version``, ``task``; for intent models ``labels``, ``oos_label``,
``oos_threshold`` and ``oos_threshold_on`` (``calibrated``: the threshold applies to the largest probability of
``softmax(logits / temperature)``), ``temperature`` (1.0 when none was fitted), ``calibration`` (the validation ECE
before and after, or null), ``max_length``, ``max_history_turns`` and ``onnx`` (null, or the file, its quantization,
opset, inputs and self-check figures); for reply models the prompt format and markers, ``system_prompt``, ``rules``
(the rules file's content) and ``generation`` (decoding settings). :func:`read_export` reads it, and the files of
older exports with defaults.

``onnx=True`` (``cs-export --onnx``, intent models) also writes ``model.onnx`` (logits; torch's dynamo exporter, with
dynamic batch and sequence axes), and with ``quantize="int8"`` ``model.int8.onnx`` in its place (onnxruntime's
dynamic quantization: int8 weights, per channel). The export checks itself: the ONNX model and the PyTorch model
run on the same examples (the validation split when ``cs-export`` can read it) and the largest logit difference and
the label agreement go into the metadata; beyond :data:`TOLERANCES` the export fails with one line and writes
nothing.

The folder is built under a temporary name and swapped in whole.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import torch

from cs_lightning import __version__
from cs_lightning.checkpoints import load_module
from cs_lightning.errors import ConfigError, CSLightningError
from cs_lightning.io import atomic_dir
from cs_lightning.prompts import MARKER_FORMAT, SPECIAL_MARKERS

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
METADATA = "cs_lightning.json"
ONNX_OPSET = 18
CHECK_EXAMPLES = 256
#: what the ONNX self-check accepts, by quantization (None: float32). Float32 must give the PyTorch logits up to
#: rounding and the same label everywhere; int8 weights move the logits, so only the labels are held to a bar. On
#: Banking77 (MiniLM + LoRA) per-channel int8 agreed on 98.0% of the validation labels and lost 0.39 points of test
#: accuracy, per-tensor int8 agreed on 96.4% and lost 0.61: below 97% a model has lost accuracy worth knowing about.
TOLERANCES = {None: {"max_abs_logit_diff": 1e-3, "label_agreement": 1.0}, "int8": {"label_agreement": 0.97}}
QUANTIZE = ("int8",)
#: texts the self-check runs on when no validation data is at hand
SAMPLE_TEXTS = ["where is my parcel", "I want my money back", "how do I reset my password",
                "my card was charged twice for the same order", "can I change the delivery address?",
                "the app keeps logging me out after the update", "cancel my subscription please",
                "what are your opening hours", "is there a fee for transfers abroad", "hello",
                "I ordered the wrong size, how do I return it and get a refund", "my account is locked",
                "why has my payment not arrived yet, it has been five days", "thanks", "top up failed",
                "I lost my card, block it now"]


def export(ckpt_path: str | Path, out_dir: str | Path, adapter: bool = False, onnx: bool = False,
           quantize: str | None = None, check_batches: list[dict] | None = None,
           check_source: str | None = None) -> Path:
    """Write the Hugging Face folder of a checkpoint (adapters merged), or with ``adapter`` its peft adapter folder;
    returns its path.

    Args:
        ckpt_path: the checkpoint.
        out_dir: the folder to write (replaced whole).
        adapter: write peft's adapter folder instead of merging the adapters.
        onnx: also write the intent model as ONNX and check it against the PyTorch model.
        quantize: ``int8``: the ONNX model with int8 weights (dynamic quantization).
        check_batches: model-input batches (``input_ids``, ``attention_mask``, ``token_type_ids``) the ONNX check
            runs on; None: :data:`SAMPLE_TEXTS`.
        check_source: where ``check_batches`` come from, for the metadata (``val``, a file).
    """
    if quantize is not None and quantize not in QUANTIZE:
        raise ConfigError("--quantize", f"unknown quantization {quantize!r}", f"use {', '.join(QUANTIZE)}")
    if quantize and not onnx:
        raise ConfigError("--quantize", "quantization applies to the ONNX model", "add --onnx")
    if onnx and adapter:
        raise ConfigError("--onnx", "an adapter folder holds no whole model to convert", "drop --adapter")
    if onnx:
        _check_onnx_installed(quantize)
    module, data = load_module(ckpt_path, key="ckpt")
    out_dir = Path(out_dir)
    task = getattr(module, "task", "")
    if onnx and task != "intent":
        raise ConfigError("--onnx", f"{ckpt_path} is a {task or 'non-intent'} model; ONNX export covers intent "
                                    "models only",
                          "export it without --onnx and serve the Hugging Face folder (cs-serve, or transformers' "
                          "generate)")
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
            eos = module.eos_token_ids  # chat format: the template's end of turn too
            gen.pad_token_id, gen.eos_token_id = module.tokenizer.pad_token_id, eos[0] if len(eos) == 1 else eos
            gen.bad_words_ids = module.bad_words_ids or None
        model.save_pretrained(str(tmp), safe_serialization=True)
        module.tokenizer.save_pretrained(str(tmp))
        info = {"format_version": FORMAT_VERSION, "cs_lightning_version": __version__, "task": task,
                "backbone": module.hparams.backbone, "exported_from": str(Path(ckpt_path).resolve())}
        if adapter:
            info["adapter"] = adapters  # the method, and the base weights it goes onto (source and sha256)
        if task == "intent":  # labels: with an adapter, the base classifier to build (num_labels)
            info.update(_intent_metadata(module, data))
            if onnx:
                batches, source = ((check_batches, check_source or "given batches") if check_batches else
                                   (_sample_batches(module.tokenizer, info["max_length"]), "sample texts"))
                info["onnx"] = _write_onnx(model.eval(), module.tokenizer, tmp, quantize, batches, source)
        if task == "reply" and getattr(module, "chat", False):
            # the tokenizer files carry the chat template; the system prompt is the one the model trained with
            info.update(reply_kind=module.backbone.reply_kind, prompt_format="chat",
                        system_prompt=module.hparams.system_message,
                        end_of_turn=module.tokenizer.convert_ids_to_tokens(module.end_of_turn_id),
                        **{k: data[k] for k in ("max_length", "language") if k in data})
        elif task == "reply":
            info.update(reply_kind=module.backbone.reply_kind, speaker_markers=SPECIAL_MARKERS,
                        prompt_format=MARKER_FORMAT,
                        **{k: data[k] for k in ("max_context_tokens", "max_history_turns", "domain_prefix",
                                                "language") if k in data})
        if task == "reply":
            for key, value in _reply_metadata(module, data).items():
                info.setdefault(key, value)  # the chat format's own system prompt stays as written above
        (tmp / METADATA).write_text(json.dumps(info, indent=2, ensure_ascii=False), encoding="utf-8")

    atomic_dir(out_dir, fill)
    return out_dir


def _intent_metadata(module, data: dict) -> dict:
    """What serving an intent model needs besides the weights: labels, out-of-scope rule, temperature, input size."""
    fitted = getattr(module, "oos_index", None) is not None
    return {"labels": list(module.labels), "oos_label": module.hparams.get("oos_label") if fitted else None,
            "oos_threshold": float(module.threshold) if fitted else None,
            "oos_threshold_on": "calibrated" if fitted else None,
            "temperature": float(getattr(module, "temperature", 1.0)),
            "calibration": getattr(module, "calibration", None),
            "max_length": int(data.get("max_length", 128)), "max_history_turns": int(data.get("max_history_turns", 4)),
            "onnx": None}


def _reply_metadata(module, data: dict) -> dict:
    """The system prompt, the business rules (a rules file's content, as the model holds them: nothing is read again
    from a path that may not exist where the export is made) and the decoding settings of a reply model."""
    rules = getattr(module, "rules", None)
    rules = rules.as_dict() if rules is not None and (rules.blocked_phrases or rules.required or rules.forbidden) \
        else None
    system_prompt = module.hparams.get("system_message") or data.get("system_prompt")
    if isinstance(system_prompt, str) and "\n" not in system_prompt and len(system_prompt) < 4096:
        try:
            if Path(system_prompt).is_file():  # data.system_prompt may name a file
                system_prompt = Path(system_prompt).read_text(encoding="utf-8-sig")
        except OSError:
            pass
    hp = module.hparams
    generation = {"max_new_tokens": hp.max_new_tokens, "num_beams": hp.num_beams,
                  "no_repeat_ngram_size": hp.no_repeat_ngram_size or None, "repetition_penalty": hp.repetition_penalty,
                  "do_sample": False}
    return {"system_prompt": system_prompt, "rules": rules, "generation": generation}


def _check_onnx_installed(quantize: str | None) -> None:
    import importlib.util

    missing = [name for name in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError("--onnx", f"needs {', '.join(missing)}, not installed",
                          "pip install 'cs-lightning[onnx]' (onnx, onnxscript, onnxruntime)")


def _sample_batches(tokenizer, max_length: int) -> list[dict]:
    enc = tokenizer(SAMPLE_TEXTS, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    return [dict(enc)]


class _Logits(torch.nn.Module):
    """The Hugging Face classifier as a function of its inputs to its logits (what the ONNX graph computes)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        kwargs = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).logits


def _inputs(batch: dict, names: list[str]) -> dict:
    out = {}
    for name in names:
        value = batch.get(name)
        if value is None:  # a tokenizer that gives no segment ids: one segment
            value = torch.zeros_like(batch["input_ids"])
        out[name] = value.long()
    return out


def _write_onnx(model, tokenizer, folder: Path, quantize: str | None, batches: list[dict], source: str) -> dict:
    """``model.onnx`` (or ``model.int8.onnx``) in ``folder``, checked against ``model`` on ``batches``."""
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if "token_type_ids" in tokenizer.model_input_names
                                               else [])
    example = _inputs(_sample_batches(tokenizer, 16)[0], names)
    example = {k: v[:2] for k, v in example.items()}  # two rows of different lengths: no axis is fixed at 1
    batch_dim, sequence_dim = torch.export.Dim("batch"), torch.export.Dim("sequence")
    path = folder / "model.onnx"
    large = sum(p.numel() * p.element_size() for p in model.parameters()) > 1.8e9  # ONNX's protobuf stops at 2 GB
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)  # the exporter's notes on operators it skips (torchvision's)
        try:
            torch.onnx.export(_Logits(model), tuple(example.values()), str(path), input_names=names,
                              output_names=["logits"], opset_version=ONNX_OPSET, dynamo=True, external_data=large,
                              dynamic_shapes=tuple({0: batch_dim, 1: sequence_dim} for _ in names), verbose=False)
        finally:
            logging.disable(logging.NOTSET)
    batches = [{k: v for k, v in b.items() if isinstance(v, torch.Tensor)} for b in batches]
    last = batches.pop()
    if len(last["input_ids"]) > 1:  # its last example alone: a batch of one is checked too
        batches.append({k: v[:-1] for k, v in last.items()})
    batches.append({k: v[-1:] for k, v in last.items()} if len(last["input_ids"]) > 1 else last)
    figures = _compare(path, model, batches, names)
    _enforce(figures, None, path.name, source)
    info = {"file": path.name, "quantize": None, "opset": ONNX_OPSET, "inputs": names, "outputs": ["logits"],
            "check": {**figures, "split": source, "tolerance": TOLERANCES[None]}}
    if quantize == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantized = folder / "model.int8.onnx"
        logging.disable(logging.WARNING)  # onnxruntime's advice to pre-process, logged on the root logger
        try:
            # per output channel: a scale per row of each weight matrix (per tensor lost 0.2 more points, see above)
            quantize_dynamic(str(path), str(quantized), weight_type=QuantType.QInt8, per_channel=True,
                             use_external_data_format=large)
        finally:
            logging.disable(logging.NOTSET)
        int8 = _compare(quantized, model, batches, names)
        _enforce(int8, quantize, quantized.name, source)
        for stale in folder.glob("model.onnx*"):  # the float32 file: the int8 one replaces it
            stale.unlink()
        info.update(file=quantized.name, quantize=quantize, fp32_check=info["check"],
                    check={**int8, "split": source, "tolerance": TOLERANCES[quantize]})
    return info


def _compare(path: Path, model, batches: list[dict], names: list[str]) -> dict:
    """Largest absolute logit difference and label agreement of the ONNX model at ``path`` and ``model``."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    largest, agree, examples = 0.0, 0, 0
    for batch in batches:
        inputs = _inputs(batch, names)
        with torch.no_grad():
            expected = _Logits(model)(**inputs).float()
        got = torch.from_numpy(session.run(["logits"], {k: v.numpy() for k, v in inputs.items()})[0]).float()
        largest = max(largest, float((got - expected).abs().max()))
        agree += int((got.argmax(-1) == expected.argmax(-1)).sum())
        examples += len(expected)
    return {"examples": examples, "max_abs_logit_diff": largest, "label_agreement": agree / max(1, examples)}


def _enforce(figures: dict, quantize: str | None, file: str, source: str) -> None:
    tolerance = TOLERANCES[quantize]
    failed = []
    if "max_abs_logit_diff" in tolerance and not figures["max_abs_logit_diff"] <= tolerance["max_abs_logit_diff"]:
        failed.append(f"largest logit difference {figures['max_abs_logit_diff']:.3g} > "
                      f"{tolerance['max_abs_logit_diff']:g}")
    if not figures["label_agreement"] >= tolerance["label_agreement"]:
        failed.append(f"label agreement {figures['label_agreement']:.4f} < {tolerance['label_agreement']:g}")
    if failed:
        fix = "export without --quantize" if quantize else "export without --onnx and serve the Hugging Face folder"
        raise CSLightningError(f"ONNX check failed: {file} disagrees with the PyTorch model on {figures['examples']} "
                               f"examples ({source}): {'; '.join(failed)}; nothing was written ({fix})")


def read_export(folder: str | Path) -> dict:
    """The metadata of an export folder (``cs_lightning.json``) with every key of :data:`FORMAT_VERSION` filled in.

    Exports written before format 2 (no ``format_version``), or without the file at all (a plain Hugging Face
    folder), still load: labels from ``config.json``'s ``id2label``, temperature 1.0, no calibration, no ONNX,
    out-of-scope label and threshold from ``config.json`` when it holds them; one line is logged saying so.

    Raises:
        ConfigError: the folder is missing, or its metadata is not valid JSON.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError("export folder", f"{folder} is not a folder", "give a folder written by cs-export")
    path = folder / METADATA
    config = {}
    if (folder / "config.json").is_file():
        try:
            config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            config = {}
    info: dict = {}
    if path.is_file():
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ConfigError("export folder", f"{path} is not valid JSON ({err})",
                              "export the checkpoint again with cs-export") from None
    version = info.get("format_version", 1)
    if version < FORMAT_VERSION:
        what = f"format {version}" if path.is_file() else f"no {METADATA}"
        log.warning(f"{folder}: an older export ({what}, before metadata format {FORMAT_VERSION}): read with "
                    "defaults (temperature 1.0, no calibration, no ONNX); export it again with cs-export for all of it")
    elif version > FORMAT_VERSION:
        log.warning(f"{folder}: metadata format {version} is newer than this cs-lightning reads "
                    f"({FORMAT_VERSION}); keys it does not know are kept as they are")
    architectures = config.get("architectures") or []
    task = info.get("task") or ("intent" if any(a.endswith("ForSequenceClassification") for a in architectures)
                                else "reply" if config else None)
    out = {"format_version": version, "cs_lightning_version": None, "task": task}
    out.update(info)
    out["format_version"] = version
    if task == "intent":
        id2label = config.get("id2label") or {}
        labels = [id2label[k] for k in sorted(id2label, key=int)] if id2label else None
        oos = {"oos_label": config.get("oos_label"), "oos_threshold": config.get("oos_threshold")}
        defaults = {"labels": labels, **oos, "oos_threshold_on": "raw" if oos["oos_threshold"] is not None else None,
                    "temperature": 1.0, "calibration": None, "max_length": 128, "max_history_turns": 4,
                    "onnx": None}
    elif task == "reply":
        defaults = {"system_prompt": None, "rules": None, "generation": None}
    else:
        defaults = {}
    for key, value in defaults.items():
        out.setdefault(key, value)
    return out
