"""``POST /v1/intent``: an intent export (PyTorch, or ONNX Runtime with ``--onnx``) behind the dynamic batcher.

Four methods with one job each, LitServe's ``LitAPI`` shape: :meth:`IntentAPI.setup` loads the export,
:meth:`~IntentAPI.decode_request` validates one request into items, :meth:`~IntentAPI.predict` runs a batch of items
from any number of requests, :meth:`~IntentAPI.encode_response` shapes one request's answer.

Inputs are encoded exactly as the intent data module encodes training examples (the message alone with the
tokenizer, or the message then its history through :class:`~cs_lightning.prompts.ContextBuilder` with
:data:`~cs_lightning.prompts.TEXT_MARKERS`). Confidence is ``softmax(logits / temperature)``'s maximum; the answer is
out of scope when the export has a threshold and the confidence (or, with ``oos_threshold_on: raw``, the
uncalibrated maximum softmax) is below it, or when the model predicts the out-of-scope label itself.

An int8 ONNX export (``cs-export --onnx --quantize int8``) runs one text per model call, never a padded batch: its
activations are quantized dynamically, with one scale per tensor, so in a batch a text's answer would depend on the
other texts (and their padding) it happens to share the call with. On the Banking77 MiniLM export batches of 8 moved
confidences by up to 0.08 and flipped a label, so the same message got different answers under load. One at a time,
every answer is the one the model gives the text alone, as offline.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from cs_lightning.prompts import ROLES, TEXT_MARKERS, ContextBuilder, Turn
from cs_lightning.serving.metadata import onnx_file, read_metadata
from cs_lightning.serving.requests import RequestError, int_field, json_type, require_object, text_field, unknown_keys


class IntentItem(NamedTuple):
    text: str
    history: tuple[Turn, ...]
    top_k: int


class TorchClassifier:
    """Logits of a batch with the export's PyTorch weights (on ``device``)."""

    def __init__(self, folder: str, device: str):
        import torch
        from transformers import AutoModelForSequenceClassification

        self.torch, self.device = torch, device
        if device == "cpu":  # as for ONNX Runtime below: one core is the event loop's
            torch.set_num_threads(max(1, _cores() - 1))
        self.model = AutoModelForSequenceClassification.from_pretrained(folder).to(device).eval()
        self.input_names = {"input_ids", "attention_mask", "token_type_ids"}

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            tensors = {k: torch.from_numpy(v).to(self.device) for k, v in inputs.items()}
            return self.model(**tensors).logits.float().cpu().numpy()


class OnnxClassifier:
    """Logits of a batch with ONNX Runtime on the export's ONNX file (CUDA when available and asked for)."""

    def __init__(self, path: str, device: str):
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # one core is the event loop's (HTTP, JSON, tokenizing): on 2 busy cores a second intra-op thread only waits
        # for it (Banking77 MiniLM: int8 ran 2.5x the texts/s with one thread than with ONNX Runtime's default of two;
        # PyTorch took 495 ms a text with two threads and 6.7 ms with one)
        options.intra_op_num_threads = max(1, _cores() - 1)
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.input_names = {i.name for i in self.session.get_inputs()}
        self.output = self.session.get_outputs()[0].name

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        feed = {k: v for k, v in inputs.items() if k in self.input_names}
        return np.asarray(self.session.run([self.output], feed)[0], dtype=np.float32)


class IntentAPI:
    """An intent export served: labels, calibrated confidence, out-of-scope flag, top-k alternatives.

    Args:
        folder: the export folder.
        onnx: run the export's ONNX file with ONNX Runtime instead of the PyTorch weights.
        device: ``cpu`` or ``cuda`` (PyTorch), or the provider preference for ONNX Runtime.
        max_chars: longest message (and history turn) accepted, in characters.
    """

    key = "--intent"

    def __init__(self, folder: str, onnx: bool = False, device: str = "cpu", max_chars: int = 2000):
        self.meta = read_metadata(folder, self.key)
        if self.meta["task"] != "intent":
            from cs_lightning.errors import ConfigError

            raise ConfigError(self.key, f"{folder} holds a {self.meta['task'] or 'non-intent'} model, not an intent classifier",
                              "give it with --reply, or give an intent export here")
        self.onnx_path = onnx_file(self.meta, self.key) if onnx else None
        self.device, self.max_chars = device, max_chars
        self.labels = list(self.meta["labels"])
        oos = self.meta.get("oos_label")
        self.oos_label = oos
        self.threshold = self.meta.get("oos_threshold") if oos else None
        self.temperature = float(self.meta.get("temperature") or 1.0)
        self.raw_threshold = self.meta.get("oos_threshold_on") == "raw"
        self.default_top_k = min(int(self.meta.get("top_k") or 3), len(self.labels))

    # ------------------------------------------------------------------ LitAPI's four methods
    def setup(self) -> None:
        from transformers import AutoTokenizer

        folder = self.meta["folder"]
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.runtime = OnnxClassifier(self.onnx_path, self.device) if self.onnx_path else \
            TorchClassifier(folder, self.device)
        self.want_types = "token_type_ids" in self.tokenizer.model_input_names and \
            "token_type_ids" in self.runtime.input_names
        # dynamically quantized activations: a batch's shared scale would make answers depend on the batch
        self.one_at_a_time = bool(self.onnx_path and (self.meta.get("onnx") or {}).get("quantize"))
        self.predict([IntentItem("warm up", (), 1)])  # the first call pays for lazy initialisation, not a client

    def decode_request(self, data) -> tuple[list[IntentItem], bool]:
        """Items of ``{"text", "history"?, "top_k"?}`` or ``{"texts": [text or {"text", "history"?}], "top_k"?}``,
        and whether it was a batch request."""
        data = require_object(data)
        unknown_keys(data, {"text", "texts", "history", "top_k"})
        top_k = int_field(data["top_k"], "top_k", 1, len(self.labels)) if "top_k" in data else self.default_top_k
        if ("text" in data) == ("texts" in data):
            raise RequestError(400, "give either text or texts", "text", 'send {"text": "..."} or '
                               '{"texts": ["...", ...]}', code="missing_field")
        if "text" in data:
            return [IntentItem(text_field(data["text"], "text", self.max_chars),
                               self._history(data.get("history"), "history"), top_k)], False
        if "history" in data:
            raise RequestError(400, "history goes inside each item of texts", "history",
                               'send {"texts": [{"text": ..., "history": [...]}, ...]}', code="unknown_field")
        texts = data["texts"]
        if not isinstance(texts, list) or not texts:
            raise RequestError(400, f"expected a non-empty array, got {json_type(texts)}"
                               if not isinstance(texts, list) else "empty array", "texts",
                               "send at least one text", code="invalid_type")
        items = []
        for i, entry in enumerate(texts):
            where = f"texts[{i}]"
            if isinstance(entry, dict):
                unknown_keys(entry, {"text", "history"}, f"{where}.")
                if "text" not in entry:
                    raise RequestError(400, "missing text", f"{where}.text", code="missing_field")
                items.append(IntentItem(text_field(entry["text"], f"{where}.text", self.max_chars),
                                        self._history(entry.get("history"), f"{where}.history"), top_k))
            else:
                items.append(IntentItem(text_field(entry, where, self.max_chars), (), top_k))
        return items, True

    def predict(self, items: list[IntentItem]) -> list[dict]:
        """One answer per item: label, confidence, oos, top_k."""
        if self.one_at_a_time and len(items) > 1:
            logits = np.concatenate([self.runtime(self._encode([item])) for item in items]).astype(np.float64)
        else:
            logits = self.runtime(self._encode(items)).astype(np.float64)
        calibrated = _softmax(logits / self.temperature)
        raw = calibrated if self.temperature == 1.0 else _softmax(logits)
        answers = []
        for row, raw_row, item in zip(calibrated, raw, items):
            order = np.argsort(-row, kind="stable")
            best = int(order[0])
            confidence = float(row[best])
            label = self.labels[best]
            score = float(raw_row.max()) if self.raw_threshold else confidence
            below = self.threshold is not None and score < float(self.threshold)
            if below:
                label = self.oos_label
            answers.append({"label": label, "confidence": round(confidence, 6),
                            "oos": bool(below or (self.oos_label is not None and label == self.oos_label)),
                            "top_k": [{"label": self.labels[j], "confidence": round(float(row[j]), 6)}
                                      for j in order[:item.top_k]]})
        return answers

    @staticmethod
    def encode_response(answers: list[dict], batch: bool) -> dict:
        return {"results": answers} if batch else answers[0]

    # ------------------------------------------------------------------ helpers
    def _history(self, value, field: str) -> tuple[Turn, ...]:
        """Earlier turns as the data files write them: strings alternating backwards from the message (the newest
        earlier turn is the agent's) or ``{"role": "user"|"agent", "text"}``."""
        if value is None:
            return ()
        if not isinstance(value, list):
            raise RequestError(400, f"expected an array of turns, got {json_type(value)}", field,
                               'send ["earlier turn", ...]', code="invalid_type")
        turns = []
        for i, item in enumerate(value):
            where = f"{field}[{i}]"
            if isinstance(item, dict):
                unknown_keys(item, {"role", "text"}, f"{where}.")
                if item.get("role") not in ROLES:
                    raise RequestError(400, f"role {item.get('role')!r}", f"{where}.role", "use user or agent",
                                       code="invalid_value")
                turns.append(Turn(item["role"], text_field(item.get("text"), f"{where}.text", self.max_chars)))
            else:
                turns.append(Turn(ROLES[(len(value) - i) % 2], text_field(item, where, self.max_chars)))
        return tuple(turns)

    def _encode(self, items: list[IntentItem]) -> dict[str, np.ndarray]:
        """Padded arrays of the items, encoded as the intent data module encodes training examples."""
        max_length, turns = int(self.meta["max_length"]), int(self.meta["max_history_turns"])
        ids: list[list[int]] = [[] for _ in items]
        types: list[list[int]] = [[] for _ in items]
        single = [i for i, item in enumerate(items) if not item.history or turns <= 0]
        if single:
            out = self.tokenizer([items[i].text for i in single], truncation=True, max_length=max_length,
                                 return_token_type_ids=self.want_types)
            for j, i in enumerate(single):
                ids[i] = out["input_ids"][j]
                types[i] = out["token_type_ids"][j] if self.want_types else []
        rest = [i for i in range(len(items)) if i not in set(single)]
        if rest:
            builder = ContextBuilder(self.tokenizer, max_turns=turns, markers=TEXT_MARKERS)
            for i in rest:
                ids[i], types[i] = builder.message_with_history(items[i].text, items[i].history, max_length)
        width = max(len(row) for row in ids)
        pad = self.tokenizer.pad_token_id or 0
        input_ids = np.full((len(items), width), pad, dtype=np.int64)
        mask = np.zeros((len(items), width), dtype=np.int64)
        type_ids = np.zeros((len(items), width), dtype=np.int64)
        for r, row in enumerate(ids):
            input_ids[r, :len(row)] = row
            mask[r, :len(row)] = 1
            if self.want_types and types[r]:
                type_ids[r, :len(types[r])] = types[r]
        arrays = {"input_ids": input_ids, "attention_mask": mask}
        if self.want_types:
            arrays["token_type_ids"] = type_ids
        return arrays


def _cores() -> int:
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)
