"""The HTTP application: routes, the API-key gate, one-line JSON errors, metrics, and loading the models in the
background so ``/health`` answers (503, then 200) while they load."""

from __future__ import annotations

import asyncio
import hmac
import json
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from cs_lightning.serving.batching import DynamicBatcher
from cs_lightning.serving.metrics import Metrics
from cs_lightning.serving.page import chat_page
from cs_lightning.serving.requests import RequestError, read_json

ENDPOINTS = ("/v1/intent", "/v1/chat/completions", "/v1/models", "/health", "/metrics", "/")
OPEN = ("/health", "/")  # answered without the API key: load balancers probe /health; the page asks for the key


@dataclass
class Settings:
    """What the command line decides beyond the models (see ``cs-serve --help``)."""

    api_key: str | None = None
    max_batch_size: int = 32
    batch_timeout: float = 0.005
    max_body_bytes: int = 1 << 20


class Service:
    """The models, their batchers and the server's state; the routes call it."""

    def __init__(self, intent=None, chat=None, settings: Settings | None = None,
                 on_load_error: Callable[[BaseException], None] | None = None):
        self.intent, self.chat, self.settings = intent, chat, settings or Settings()
        self.metrics = Metrics()
        self.ready = False
        self.on_load_error = on_load_error
        self.on_ready: Callable[[], None] | None = None
        self.intent_batcher: DynamicBatcher | None = None
        self.chat_batcher: DynamicBatcher | None = None

    def load(self) -> None:
        """Load every model (in a background thread), then start their batchers and report ready."""
        try:
            s = self.settings
            if self.intent is not None:
                self.intent.setup()
                observe = self.metrics.batch_size.labels("intent").observe
                self.intent_batcher = DynamicBatcher(self.intent.predict, s.max_batch_size, s.batch_timeout,
                                                     observe, name="intent-batcher")
            if self.chat is not None:
                self.chat.setup()
                observe = self.metrics.batch_size.labels("reply").observe
                # one generation at a time: replies differ in length, and a batch would wait for its longest one
                self.chat_batcher = DynamicBatcher(self.chat.predict, 1, 0.0, observe, name="reply-batcher")
            self.ready = True
            self.metrics.ready.set(1)
            if self.on_ready is not None:
                self.on_ready()
        except BaseException as exc:  # noqa: BLE001 - reported by the server as one line, then it exits
            if self.on_load_error is None:
                raise
            self.on_load_error(exc)

    def close(self) -> None:
        for batcher in (self.intent_batcher, self.chat_batcher):
            if batcher is not None:
                batcher.close()

    def models(self) -> dict:
        return {name: api.meta["name"] for name, api in (("intent", self.intent), ("reply", self.chat)) if api}

    def require(self, api, option: str):
        if api is None:
            raise RequestError(404, f"this server has no {option.strip('-')} model", fix=f"start it with {option} DIR",
                               code="no_model")
        if not self.ready:
            raise RequestError(503, "the models are still loading", fix="retry when GET /health says ready",
                               code="loading")
        return api


def error_response(err: RequestError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


class Gate:
    """ASGI middleware: the API key (``Authorization: Bearer KEY`` or ``X-API-Key: KEY``) on every path but
    ``/health`` and ``/`` (the chat page, which asks for the key itself), request counts and latencies, requests in
    flight."""

    def __init__(self, app, service: Service):
        self.app, self.service = app, service

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        metrics, key = self.service.metrics, self.service.settings.api_key
        path = scope["path"]
        endpoint = path if path in ENDPOINTS else "other"
        start, status = time.perf_counter(), [500]

        async def sending(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        metrics.in_flight.inc()
        try:
            if key and path not in OPEN and not self._authorised(scope, key):
                err = RequestError(401, "missing or wrong API key", fix="send Authorization: Bearer KEY",
                                   code="invalid_api_key")
                await error_response(err)(scope, receive, sending)
            else:
                await self.app(scope, receive, sending)
        finally:
            metrics.in_flight.dec()
            metrics.requests.labels(endpoint, str(status[0])).inc()
            metrics.latency.labels(endpoint).observe(time.perf_counter() - start)

    @staticmethod
    def _authorised(scope, key: str) -> bool:
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"x-api-key", b"")
        auth = headers.get(b"authorization", b"")
        if auth[:7].lower() == b"bearer ":
            given = auth[7:].strip()
        return hmac.compare_digest(given, key.encode("utf-8"))


def build_app(service: Service) -> FastAPI:
    """The FastAPI application of ``service``; the models start loading when the application starts."""
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app):
        threading.Thread(target=service.load, name="load-models", daemon=True).start()
        yield
        service.close()

    app = FastAPI(lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)
    app.add_middleware(Gate, service=service)
    limit = service.settings.max_body_bytes

    @app.exception_handler(RequestError)
    async def request_error(request, err: RequestError):
        return error_response(err)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, err: StarletteHTTPException):
        problem = {404: "no such endpoint", 405: "method not allowed"}.get(err.status_code, str(err.detail))
        fix = f"use one of {', '.join(ENDPOINTS)}" if err.status_code in (404, 405) else None
        return error_response(RequestError(err.status_code, f"{request.method} {request.url.path}: {problem}",
                                           fix=fix, code="not_found" if err.status_code == 404 else "bad_method"))

    @app.exception_handler(Exception)
    async def server_error(request, err: Exception):
        return error_response(RequestError(500, f"internal error ({type(err).__name__})", code="internal_error"))

    @app.get("/health")
    async def health():
        body = {"status": "ready" if service.ready else "loading", "models": service.models()}
        return JSONResponse(body, status_code=200 if service.ready else 503)

    @app.get("/")
    async def page():
        html, headers = chat_page()
        return Response(html, media_type="text/html; charset=utf-8", headers=headers)

    @app.get("/metrics")
    async def metrics():
        return Response(service.metrics.text(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "cs-lightning", "task": task}
                                           for task, name in service.models().items()]}

    @app.post("/v1/intent")
    async def intent(request: Request):
        api = service.require(service.intent, "--intent")
        items, batch = api.decode_request(await read_json(request, limit))
        answers = await service.intent_batcher.submit(items)
        service.metrics.intent_answers(answers)
        return api.encode_response(answers, batch)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        api = service.require(service.chat, "--reply")
        chat_request = api.decode_request(await read_json(request, limit))
        ident, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        intent = await _intent_of(service, chat_request)
        if not chat_request.stream:
            reply = (await service.chat_batcher.submit([(chat_request, None)]))[0]
            violations = api.rules.violations(reply.text, chat_request.turns, intent)
            service.metrics.reply(violations)
            return api.encode_response(reply, violations, ident, created)
        return StreamingResponse(_stream(service, api, chat_request, intent, ident, created),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    return app


async def _intent_of(service: Service, request) -> str | None:
    """The intent of the last user message, for rules that name intents (only when an intent model is served)."""
    rules = service.chat.rules
    if service.intent_batcher is None or not any(r.when_intent for r in rules.required):
        return None
    from cs_lightning.serving.intent import IntentItem

    last = request.turns[-1]
    answer = (await service.intent_batcher.submit([IntentItem(last.text, request.turns[:-1], 1)]))[0]
    return answer["label"]


def _sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n"


async def _stream(service: Service, api, request, intent, ident: str, created: int):
    """Server-sent events: the role, the reply as it is generated, a last chunk with the finish reason, usage and
    ``cs_rule_violations``, then ``[DONE]``."""
    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue = asyncio.Queue()

    def on_text(text: str) -> None:  # called from the generation thread
        loop.call_soon_threadsafe(pieces.put_nowait, text)

    task = asyncio.ensure_future(service.chat_batcher.submit([(request, on_text)]))
    task.add_done_callback(lambda _: pieces.put_nowait(None))
    try:
        yield _sse(api.chunk(ident, created, {"role": "assistant", "content": ""}))
        while (text := await pieces.get()) is not None:
            yield _sse(api.chunk(ident, created, {"content": text}))
        try:
            reply = task.result()[0]
        except Exception as exc:  # noqa: BLE001 - the status line is sent already: the error goes in the stream
            yield _sse(RequestError(500, f"generation failed ({type(exc).__name__})", code="internal_error").body())
            return
        violations = api.rules.violations(reply.text, request.turns, intent)
        service.metrics.reply(violations)
        usage = {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
                 "total_tokens": reply.prompt_tokens + reply.completion_tokens}
        yield _sse(api.chunk(ident, created, {}, reply.finish_reason, usage=usage, cs_rule_violations=violations))
        yield _sse("[DONE]")
    finally:
        request.cancel.set()  # a client that left stops its generation; after the end, nothing to stop
