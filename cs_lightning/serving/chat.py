"""``POST /v1/chat/completions``: a reply export behind an OpenAI-compatible endpoint, with the export's prompt
format, system prompt and business rules.

Same four-method shape as :mod:`cs_lightning.serving.intent`. The prompt is built as the model was trained and as
``cs-chat`` asks it: the marker format through :class:`~cs_lightning.prompts.ReplyPrompt`, or, when the export says
``prompt_format: chat`` and the tokenizer has a chat template, the template with the generation prompt (through
:class:`~cs_lightning.prompts.ChatPrompt` where it exists). Blocked phrases are a generation constraint
(:func:`~cs_lightning.constraints.blocked_phrases_processor`), so no reply contains one; every answer lists the rules
the reply breaks (``cs_rule_violations``), measured on the reply exactly as generated.

OpenAI roles map to ours: ``user`` to user, ``assistant`` to agent. The export's system prompt is the one the model was
trained with, so it is always used; a client's ``system``/``developer`` message is used only by a chat-format export
that has none, and the marker format has no place for one.
"""

from __future__ import annotations

import threading
from typing import Callable, NamedTuple

from cs_lightning.errors import ConfigError, CSLightningError
from cs_lightning.prompts import ReplyPrompt, Turn, join_cjk
from cs_lightning.serving.metadata import read_metadata
from cs_lightning.serving.requests import RequestError, int_field, json_type, require_object, text_field, unknown_keys

HONOURED = {"messages", "model", "stream", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "domain"}
IGNORED = {"user", "stream_options", "presence_penalty", "frequency_penalty", "seed", "logprobs", "top_logprobs",
           "metadata", "store", "logit_bias", "parallel_tool_calls", "service_tier", "response_format"}
REFUSED = {"tools", "tool_choice", "functions", "function_call", "audio", "modalities", "stop"}
ROLE_MAP = {"user": "user", "assistant": "agent"}


class ChatRequest(NamedTuple):
    turns: tuple[Turn, ...]
    system: str | None
    stream: bool
    max_new_tokens: int
    temperature: float
    top_p: float
    domain: str | None
    cancel: threading.Event


class Reply(NamedTuple):
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


def rules_from_dict(rules: dict, source: str):
    """:class:`~cs_lightning.rules.BusinessRules` from the export's ``rules`` object, checked as a rules file is;
    a bad one is one line naming the export."""
    from cs_lightning.rules import BusinessRules

    try:
        return BusinessRules.from_dict(rules, f"{source}: rules")
    except CSLightningError as err:
        raise ConfigError("--reply", str(err), "export the model again") from None


class ChatAPI:
    """A reply export served OpenAI-style, within its business rules.

    Args:
        folder: the export folder.
        device: ``cpu`` or ``cuda``.
        max_chars: longest message content accepted, in characters.
        rules_file: a rules file used instead of the export's own rules (exports written before the metadata
            carried rules have none).
        domain: the domain prefix of marker-format prompts (default: the export's, else none; as ``cs-chat --domain``).
    """

    key = "--reply"

    def __init__(self, folder: str, device: str = "cpu", max_chars: int = 2000, rules_file: str | None = None,
                 domain: str | None = None):
        self.meta = read_metadata(folder, self.key)
        if self.meta["task"] != "reply":
            task = {"intent": "an intent"}.get(self.meta["task"], f"a {self.meta['task']}")
            raise ConfigError(self.key, f"{folder} holds {task} model, not a reply model",
                              "give it with --intent, or give a reply export here")
        self.device, self.max_chars, self.rules_file = device, max_chars, rules_file
        self.domain = domain or self.meta.get("domain")
        self.name = self.meta["name"]

    # ------------------------------------------------------------------ LitAPI's four methods
    def setup(self) -> None:
        from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

        from cs_lightning.rules import BusinessRules

        meta, folder = self.meta, self.meta["folder"]
        self.tokenizer = tok = AutoTokenizer.from_pretrained(folder)
        self.causal = meta["reply_kind"] == "causal"
        auto = AutoModelForCausalLM if self.causal else AutoModelForSeq2SeqLM
        self.model = auto.from_pretrained(folder).to(self.device).eval()
        if self.rules_file:
            self.rules = BusinessRules.load(self.rules_file)
        elif meta.get("rules"):
            self.rules = rules_from_dict(meta["rules"], f"{folder}/cs_lightning.json")
        else:
            self.rules = BusinessRules()
        gen = self.model.generation_config
        settings = {"max_new_tokens": gen.max_new_tokens or 48, "num_beams": gen.num_beams or 1,
                    "no_repeat_ngram_size": gen.no_repeat_ngram_size or None,
                    "repetition_penalty": gen.repetition_penalty or 1.0}
        settings.update({k: v for k, v in (meta.get("generation") or {}).items() if k in settings})
        self.generation = settings
        eos = gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]
        self.chat_prompt = None
        if meta.get("prompt_format") == "chat" and getattr(tok, "chat_template", None):
            self.chat_prompt = self._chat_prompt()
            eos.append(getattr(self.chat_prompt, "end_of_turn_id", None))
        else:
            self.reply_prompt = ReplyPrompt(tok, meta["reply_kind"], int(meta["max_context_tokens"]),
                                            int(meta["max_history_turns"]), bool(meta["domain_prefix"]))
        self.eos = list(dict.fromkeys(i for i in eos + [tok.eos_token_id] if i is not None))

    def decode_request(self, data) -> ChatRequest:
        data = require_object(data)
        for key in data:
            if key in REFUSED and data[key] not in (None, [], {}):
                raise RequestError(400, "not supported by this server", key, "leave it out", code="unsupported")
        unknown_keys(data, HONOURED | IGNORED | REFUSED)
        messages = data.get("messages")
        if not isinstance(messages, list) or not messages:
            raise RequestError(400, f"expected a non-empty array of messages, got {json_type(messages)}"
                               if not isinstance(messages, list) else "empty array", "messages",
                               'send [{"role": "user", "content": "..."}]', code="invalid_type")
        turns, system = [], None
        for i, message in enumerate(messages):
            where = f"messages[{i}]"
            if not isinstance(message, dict):
                raise RequestError(400, f"expected an object, got {json_type(message)}", where, code="invalid_type")
            role = message.get("role")
            content = self._content(message.get("content"), f"{where}.content")
            if role in ("system", "developer"):
                system = content
            elif role in ROLE_MAP:
                turns.append(Turn(ROLE_MAP[role], content))
            else:
                raise RequestError(400, f"role {role!r} is not supported", f"{where}.role",
                                   "use system, user or assistant", code="invalid_value")
        if not turns or turns[-1].role != "user":
            raise RequestError(400, "the last message must be the user's", "messages",
                               "end the conversation with a user message; the model writes the assistant's reply",
                               code="invalid_value")
        if data.get("n", 1) != 1:
            raise RequestError(400, "only n = 1 is supported", "n", code="unsupported")
        if not isinstance(data.get("stream", False), bool):
            raise RequestError(400, f"expected a boolean, got {json_type(data['stream'])}", "stream",
                               code="invalid_type")
        limit = int(self.generation["max_new_tokens"])
        max_new = limit
        for key in ("max_completion_tokens", "max_tokens"):
            if data.get(key) is not None:
                max_new = int_field(data[key], key, 1, limit)
        temperature = self._number(data.get("temperature"), "temperature", 0.0, 2.0, 0.0)
        top_p = self._number(data.get("top_p"), "top_p", 0.0, 1.0, 1.0)
        domain = data.get("domain", self.domain)
        if domain is not None and not isinstance(domain, str):
            raise RequestError(400, f"expected a string, got {json_type(domain)}", "domain", code="invalid_type")
        return ChatRequest(tuple(turns), system, bool(data.get("stream", False)), max_new, temperature, top_p,
                           domain, threading.Event())

    def predict(self, requests: list[tuple[ChatRequest, Callable[[str], None] | None]]) -> list[Reply]:
        """Generate the reply of each request (the batcher gives one at a time); ``on_text`` receives the new text
        as it is generated, for streaming."""
        return [self._generate(request, on_text) for request, on_text in requests]

    def encode_response(self, reply: Reply, violations: list[str], ident: str, created: int) -> dict:
        return {"id": ident, "object": "chat.completion", "created": created, "model": self.name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.text},
                             "finish_reason": reply.finish_reason}],
                "usage": {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
                          "total_tokens": reply.prompt_tokens + reply.completion_tokens},
                "cs_rule_violations": violations}

    def chunk(self, ident: str, created: int, delta: dict, finish_reason: str | None = None, **extra) -> dict:
        """One ``chat.completion.chunk`` of a streamed answer."""
        return {"id": ident, "object": "chat.completion.chunk", "created": created, "model": self.name,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}], **extra}

    # ------------------------------------------------------------------ helpers
    def _chat_prompt(self):
        try:
            from cs_lightning.prompts import ChatPrompt
        except ImportError:  # prompts.py without the chat format yet: the template alone
            return None
        return ChatPrompt(self.tokenizer, self.meta.get("system_prompt"), int(self.meta["max_length"]))

    def _prompt_ids(self, request: ChatRequest) -> list[int]:
        if self.meta.get("prompt_format") == "chat" and getattr(self.tokenizer, "chat_template", None):
            system = self.meta.get("system_prompt") or request.system
            if self.chat_prompt is not None:
                return self.chat_prompt.prompt_ids(request.turns, system)
            messages = ([{"role": "system", "content": system}] if system else []) + \
                [{"role": "assistant" if t.role == "agent" else "user", "content": t.text} for t in request.turns]
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return self.reply_prompt.encode(request.turns, request.domain)[0]

    def _clean(self, text: str) -> str:
        text = " ".join(text.split())
        return join_cjk(text) if self.meta.get("language") == "zh" else text

    def _generate(self, request: ChatRequest, on_text: Callable[[str], None] | None) -> Reply:
        import torch
        from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer

        from cs_lightning.constraints import blocked_phrases_processor, template_tokens

        tok, settings = self.tokenizer, self.generation
        prompt = self._prompt_ids(request)
        ids = torch.tensor([prompt], dtype=torch.long, device=self.device)
        sample = request.temperature > 0
        beams = 1 if sample else int(settings["num_beams"])
        processors = LogitsProcessorList()
        if self.rules.blocked:  # on the decoded text: holds however the tokenizer splits a phrase
            processors.append(blocked_phrases_processor(
                self.rules.blocked, tok, prompt_length=ids.shape[1] if self.causal else 1,
                max_new_tokens=request.max_new_tokens, eos_token_ids=self.eos, num_beams=beams, sample=sample))
        sent = [""]
        generated: list[int] = []

        class Stream(BaseStreamer):
            first = True

            def put(inner, value):  # noqa: N805 - the streamer protocol of generate
                if inner.first:  # the prompt (causal) or the decoder's start token
                    inner.first = False
                    return
                generated.extend(int(t) for t in value.reshape(-1).tolist())
                text = self._clean(tok.decode(generated, skip_special_tokens=True))
                if text.endswith("\ufffd") or not text.startswith(sent[0]):
                    return  # half a character, or text that will still change: wait for the next token
                if len(text) > len(sent[0]):
                    on_text(text[len(sent[0]):])
                    sent[0] = text

            def end(inner):  # noqa: N805
                pass

        class Cancelled(StoppingCriteria):
            def __call__(inner, input_ids, scores, **kwargs):  # noqa: N805
                return request.cancel.is_set()

        extra = {"do_sample": True, "temperature": request.temperature, "top_p": request.top_p, "top_k": 0} \
            if sample else {"do_sample": False}
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=request.max_new_tokens,
                num_beams=beams, no_repeat_ngram_size=settings["no_repeat_ngram_size"],
                repetition_penalty=settings["repetition_penalty"], pad_token_id=tok.pad_token_id,
                eos_token_id=self.eos, logits_processor=processors,
                suppress_tokens=(template_tokens(tok, self.eos) or None) if self.chat_prompt is not None else None,
                stopping_criteria=StoppingCriteriaList([Cancelled()]),
                streamer=Stream() if on_text is not None and beams == 1 else None, **extra)
        new = out[0, ids.shape[1]:] if self.causal else out[0, 1:]
        new = new.tolist()
        ended = any(t in self.eos for t in new)
        if ended:
            new = new[:next(i for i, t in enumerate(new) if t in self.eos)]
        text = self._clean(tok.decode(new, skip_special_tokens=True))
        if on_text is not None and text.startswith(sent[0]) and len(text) > len(sent[0]):
            on_text(text[len(sent[0]):])  # what the stream held back, or the whole reply of a beam search
        finish = "length" if not ended and len(new) >= request.max_new_tokens else "stop"
        return Reply(text, finish, len(prompt), len(new))

    def _content(self, value, field: str) -> str:
        """A message's content: a string, or OpenAI's list of ``{"type": "text", "text"}`` parts."""
        if isinstance(value, list):
            parts = []
            for i, part in enumerate(value):
                if not isinstance(part, dict) or part.get("type") != "text":
                    raise RequestError(400, "only text parts are supported", f"{field}[{i}]",
                                       'send {"type": "text", "text": "..."}', code="unsupported")
                parts.append(part.get("text") if isinstance(part.get("text"), str) else "")
            value = " ".join(parts)
        return text_field(value, field, self.max_chars)

    @staticmethod
    def _number(value, field: str, low: float, high: float, default: float) -> float:
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RequestError(400, f"expected a number, got {json_type(value)}", field, code="invalid_type")
        if not low <= value <= high:
            raise RequestError(400, f"{value} is out of range", field, f"use {low} to {high}", code="out_of_range")
        return float(value)
