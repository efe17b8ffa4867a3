"""Reading a request body: size limit, UTF-8, JSON, then field checks, each problem a :class:`RequestError` that
the server answers as one line of JSON (OpenAI's error shape) with a 4xx status."""

from __future__ import annotations

import json
from typing import Any

from cs_lightning.errors import CSLightningError


class RequestError(CSLightningError, ValueError):
    """A request the server cannot answer, named like a data error: ``field: problem (fix)``.

    Args:
        status: the HTTP status (400 bad request, 401, 404, 413 too large, 503 not ready...).
        problem: what is wrong, in a few words.
        field: the JSON field concerned (``texts[2]``, ``messages[0].content``), when there is one.
        fix: what the client should do about it.
        code: a short machine-readable name of the problem (``invalid_json``, ``empty_text``...).
    """

    def __init__(self, status: int, problem: str, field: str | None = None, fix: str | None = None,
                 code: str = "invalid_request"):
        self.status, self.field, self.problem, self.fix, self.code = status, field, problem, fix, code
        super().__init__((f"{field}: " if field else "") + problem + (f" ({fix})" if fix else ""))

    def body(self) -> dict:
        kind = {401: "authentication_error", 404: "not_found_error", 413: "invalid_request_error",
                503: "unavailable_error"}.get(self.status, "invalid_request_error" if self.status < 500 else "server_error")
        return {"error": {"message": str(self), "type": kind, "param": self.field, "code": self.code}}


async def read_json(request, max_bytes: int) -> Any:
    """The request's JSON body: at most ``max_bytes`` bytes (also when the length is not announced), valid UTF-8,
    valid JSON."""
    announced = request.headers.get("content-length", "")
    too_large = RequestError(413, f"the body is larger than {max_bytes} bytes", fix="send less per request",
                             code="body_too_large")
    if announced.isdigit() and int(announced) > max_bytes:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise too_large
    if not body.strip():
        raise RequestError(400, "the body is empty", fix="send a JSON object", code="invalid_json")
    try:
        text = bytes(body).decode("utf-8")
    except UnicodeDecodeError as err:
        raise RequestError(400, f"the body is not valid UTF-8 (byte 0x{body[err.start]:02x} at offset {err.start})",
                           fix="encode the JSON as UTF-8", code="invalid_utf8") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise RequestError(400, f"invalid JSON at line {err.lineno} column {err.colno}: {err.msg}",
                           fix="send one JSON object", code="invalid_json") from None
    except RecursionError:
        raise RequestError(400, "the JSON is nested too deeply", fix="send one flat JSON object",
                           code="invalid_json") from None


def require_object(data: Any) -> dict:
    if not isinstance(data, dict):
        raise RequestError(400, f"expected a JSON object, got {json_type(data)}", fix='send {"text": ...}',
                           code="invalid_type")
    return data


def json_type(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def text_field(value: Any, field: str, max_chars: int) -> str:
    """A message text: a non-empty string of valid Unicode, at most ``max_chars`` characters; whitespace runs become
    one space, as the training data readers do."""
    if not isinstance(value, str):
        raise RequestError(400, f"expected a string, got {json_type(value)}", field, code="invalid_type")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise RequestError(400, "holds a lone surrogate (not valid Unicode)", field, "send valid UTF-8 text",
                           code="invalid_utf8") from None
    if len(value) > max_chars:
        raise RequestError(400, f"{len(value)} characters, more than the limit of {max_chars}", field,
                           "send shorter text (the server's --max-chars)", code="text_too_long")
    text = " ".join(value.split())
    if not text:
        raise RequestError(400, "empty text", field, "send at least one non-space character", code="empty_text")
    return text


def int_field(value: Any, field: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(400, f"expected an integer, got {json_type(value)}", field, code="invalid_type")
    if not low <= value <= high:
        raise RequestError(400, f"{value} is out of range", field, f"use {low} to {high}", code="out_of_range")
    return value


def unknown_keys(data: dict, known: set[str], where: str = "") -> None:
    """Refuse keys nobody reads (a typo would otherwise be ignored silently), naming the closest valid one."""
    import difflib

    for key in data:
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            raise RequestError(400, "unknown field", f"{where}{key}",
                               f"did you mean {close[0]}?" if close else f"valid: {', '.join(sorted(known))}",
                               code="unknown_field")
