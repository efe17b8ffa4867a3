"""cs-serve (cs_lightning/serving): intent and chat-completions endpoints over real HTTP, on the tiny exports of the
session's intent and reply checkpoints; each server is a ``cs-serve`` subprocess on a free port of 127.0.0.1."""

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

MAX_CHARS, MAX_BODY = 200, 4096
TEXTS = ["i want my money back", "where is my parcel", "forgot my password", "delivery is late", "refund please"]


# ---------------------------------------------------------------------- helpers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(port: int, method: str, path: str, body=None, headers: dict | None = None, raw: bool = False):
    """(status, parsed JSON or text, raw bytes) of one request."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
    resp = conn.getresponse()
    payload = resp.read()
    conn.close()
    if raw:
        return resp.status, payload.decode("utf-8", "replace"), payload
    try:
        return resp.status, json.loads(payload), payload
    except json.JSONDecodeError:
        return resp.status, payload.decode("utf-8", "replace"), payload


class Server:
    """A ``cs-serve`` subprocess; ready once ``GET /health`` answers 200."""

    def __init__(self, tmp: Path, *args: str, env: dict | None = None):
        self.port = free_port()
        self.log = tmp / f"serve-{self.port}.log"
        environ = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
        environ.pop("CS_SERVE_API_KEY", None) if not env or "CS_SERVE_API_KEY" not in env else None
        self.proc = subprocess.Popen([sys.executable, "-m", "cs_lightning.commands.serve", "--port", str(self.port),
                                      *args], stdout=self.log.open("wb"), stderr=subprocess.STDOUT, env=environ)

    def wait_ready(self, timeout: float = 120) -> dict:
        end, seen = time.monotonic() + timeout, []
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError(f"cs-serve exited {self.proc.returncode}: {self.log.read_text()}")
            try:
                status, body, _ = call(self.port, "GET", "/health")
                seen.append(status)
                if status == 200:
                    return {"statuses": seen, "body": body}
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"not ready after {timeout}s: {self.log.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def offline_intent(folder: Path, texts: list[str], temperature: float = 1.0) -> list[dict]:
    """What the export predicts with plain transformers: label, softmax(logits / T) max, the probabilities."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        logits = model(**tok(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")).logits
    probs = (logits / temperature).softmax(-1)
    return [{"label": model.config.id2label[int(p.argmax())], "confidence": float(p.max()), "probs": p.tolist()}
            for p in probs]


def offline_reply(folder: Path, user_text: str) -> str:
    """The export's greedy reply to one user message, in the marker format, without rules."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cs_lightning.prompts import ReplyPrompt, Turn

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    meta = json.loads((folder / "cs_lightning.json").read_text())
    prompt = ReplyPrompt(tok, "causal", meta.get("max_context_tokens", 192), meta.get("max_history_turns", 6),
                         meta.get("domain_prefix", True)).encode((Turn("user", user_text),))[0]
    ids = torch.tensor([prompt])
    gen = model.generation_config
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=gen.max_new_tokens,
                         do_sample=False, no_repeat_ngram_size=gen.no_repeat_ngram_size, bad_words_ids=None,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    return " ".join(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).split())


def one_line_error(status: int, payload: bytes, code: str | None = None) -> dict:
    """A 4xx answer is one line of JSON with error.message (and the code when given)."""
    assert 400 <= status < 500, (status, payload)
    assert b"\n" not in payload.strip(), payload
    body = json.loads(payload)
    assert body["error"]["message"] and "\n" not in body["error"]["message"]
    if code:
        assert body["error"]["code"] == code, body
    return body


# ---------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def exports(intent_checkpoint, reply_checkpoint, tmp_path_factory):
    """The tiny intent export with temperature 2 and an out-of-scope threshold between the test texts' confidences,
    the reply export, and a rules file whose blocked phrase is a word the reply model says unconstrained."""
    from cs_lightning.export import export

    root = tmp_path_factory.mktemp("serve")
    intent = export(intent_checkpoint, root / "intent")
    offline = offline_intent(intent, TEXTS, temperature=2.0)
    confidences = sorted(o["confidence"] for o in offline)
    threshold = (confidences[1] + confidences[2]) / 2  # two texts below, three above
    meta = json.loads((intent / "cs_lightning.json").read_text())
    meta.update(temperature=2.0, oos_label="oos", oos_threshold=threshold, oos_threshold_on="calibrated")
    (intent / "cs_lightning.json").write_text(json.dumps(meta))
    reply = export(reply_checkpoint, root / "reply")
    # a message the tiny model answers with words (what it says depends on how its few steps went)
    ask, said = next(((ask, said) for ask in ("where is my parcel", "i want a refund", "my card is lost")
                      if (said := offline_reply(reply, ask))), ("where is my parcel", ""))
    assert said, "the tiny reply model answers every test message with nothing"
    word = max(said.split(), key=len)
    rules = root / "rules.yaml"
    rules.write_text(json.dumps({"blocked_phrases": [word], "required": [
        {"name": "apology", "when_context": "parcel|refund|card", "pattern": "sorry"}]}))
    return {"root": root, "intent": intent, "reply": reply, "rules": rules, "threshold": threshold,
            "offline": offline, "ask": ask, "said": said, "blocked": word}


@pytest.fixture(scope="module")
def server(exports):
    srv = Server(exports["root"], "--intent", str(exports["intent"]), "--reply", str(exports["reply"]),
                 "--rules", str(exports["rules"]), "--max-chars", str(MAX_CHARS), "--max-body-bytes", str(MAX_BODY),
                 "--max-batch-size", "8", "--batch-timeout", "0.01")
    srv.ready = srv.wait_ready()
    yield srv
    srv.stop()


# ---------------------------------------------------------------------- tests
def test_health_is_ready_once_the_models_are_loaded(server, exports):
    assert server.ready["body"] == {"status": "ready", "models": {"intent": "intent", "reply": "reply"}}
    assert set(server.ready["statuses"]) <= {200, 503}  # 503 while loading, never anything else
    assert "ready at http://127.0.0.1:" in server.log.read_text()


def test_intent_single_and_batch_equal_offline_predictions(server, exports):
    offline, threshold = exports["offline"], exports["threshold"]
    status, single, _ = call(server.port, "POST", "/v1/intent", {"text": TEXTS[0], "top_k": 2})
    assert status == 200
    status, batch, _ = call(server.port, "POST", "/v1/intent", {"texts": TEXTS, "top_k": 3})
    assert status == 200 and len(batch["results"]) == len(TEXTS)
    assert single["top_k"] == batch["results"][0]["top_k"][:2]
    assert {"label", "confidence", "oos", "top_k"} == set(single)
    for answer, expected in zip(batch["results"], offline):
        assert answer["confidence"] == pytest.approx(expected["confidence"], abs=1e-5)  # softmax(logits / 2)
        assert answer["oos"] == (expected["confidence"] < threshold)
        assert answer["label"] == ("oos" if answer["oos"] else expected["label"])
        assert answer["top_k"][0]["label"] == expected["label"]  # alternatives are the model's own classes
        assert [a["confidence"] for a in answer["top_k"]] == sorted(expected["probs"], reverse=True)[:3] or \
            all(abs(a - b) < 1e-5 for a, b in zip([a["confidence"] for a in answer["top_k"]],
                                                  sorted(expected["probs"], reverse=True)))
    assert sum(a["oos"] for a in batch["results"]) == 2
    # the conversation so far, as the data files write it
    status, with_history, _ = call(server.port, "POST", "/v1/intent", {
        "text": "yes the blue one", "history": ["i want to return a shirt", "which colour is it?"]})
    assert status == 200 and with_history["label"] in ("refund", "delivery", "login", "oos")
    status, mixed, _ = call(server.port, "POST", "/v1/intent", {
        "texts": [{"text": "yes", "history": [{"role": "user", "text": "refund please"}]}, "track my order"]})
    assert status == 200 and len(mixed["results"]) == 2


def test_concurrent_requests_are_batched_and_answered_right(server, exports):
    from concurrent.futures import ThreadPoolExecutor

    offline = {t: o for t, o in zip(TEXTS, exports["offline"])}
    requests = [TEXTS[i % len(TEXTS)] for i in range(40)]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda t: call(server.port, "POST", "/v1/intent", {"text": t}), requests))
    for text, (status, body, _) in zip(requests, answers):
        assert status == 200
        assert body["confidence"] == pytest.approx(offline[text]["confidence"], abs=1e-5)
    _, metrics, _ = call(server.port, "GET", "/metrics", raw=True)
    sizes = {line.split(" ")[0]: float(line.split(" ")[1]) for line in metrics.splitlines()
             if line.startswith("cs_serve_batch_size_") and 'model="intent"' in line}
    count, total = sizes['cs_serve_batch_size_count{model="intent"}'], sizes['cs_serve_batch_size_sum{model="intent"}']
    assert total > count  # some model calls served more than one text


def test_chat_completion_follows_the_rules(server, exports):
    said, blocked = exports["said"], exports["blocked"]
    status, body, _ = call(server.port, "POST", "/v1/chat/completions", {
        "model": "anything", "messages": [{"role": "system", "content": "be nice"},
                                          {"role": "user", "content": exports["ask"]}]})
    assert status == 200, body
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["role"] == "assistant"
    content = body["choices"][0]["message"]["content"]
    from cs_lightning.rules import PhraseMatcher

    assert blocked in said.split()  # what the model says without the rule
    assert not PhraseMatcher([blocked]).find(content), (said, content)  # ... it cannot say with it
    assert body["cs_rule_violations"] == ["apology"]  # the required apology is missing
    assert body["choices"][0]["finish_reason"] in ("stop", "length")
    assert body["usage"]["completion_tokens"] > 0
    assert body["model"] == "reply"


def test_chat_completion_streams_the_same_reply(server):
    request = {"messages": [{"role": "user", "content": "where is my parcel"}]}
    _, whole, _ = call(server.port, "POST", "/v1/chat/completions", request)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.request("POST", "/v1/chat/completions", body=json.dumps({**request, "stream": True}))
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("content-type").startswith("text/event-stream")
    events = [line[6:] for line in resp.read().decode().splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == whole["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
    assert chunks[-1]["cs_rule_violations"] == whole["cs_rule_violations"]


def test_metrics_expose_counters(server):
    call(server.port, "POST", "/v1/intent", {"text": "refund please"})
    status, text, _ = call(server.port, "GET", "/metrics", raw=True)
    assert status == 200
    for needle in ('cs_serve_requests_total{endpoint="/v1/intent",status="200"}',
                   'cs_serve_request_duration_seconds_bucket{endpoint="/v1/intent",le="0.15"}',
                   'cs_serve_batch_size_bucket{le="8.0",model="intent"}', "cs_serve_intent_oos_rate ",
                   "cs_serve_intent_predictions_total ", "cs_serve_ready 1.0"):
        assert needle in text, needle


BAD_REQUESTS = [
    ("/v1/intent", b'{"text": ', "invalid_json"),
    ("/v1/intent", b'{"text": "\xff\xfe caf\xe9"}', "invalid_utf8"),
    ("/v1/intent", b'{"text": "\\ud800"}', "invalid_utf8"),
    ("/v1/intent", b"", "invalid_json"),
    ("/v1/intent", b"[1, 2]", "invalid_type"),
    ("/v1/intent", {"text": 5}, "invalid_type"),
    ("/v1/intent", {"texts": "one"}, "invalid_type"),
    ("/v1/intent", {"texts": []}, "invalid_type"),
    ("/v1/intent", {"texts": ["ok", None]}, "invalid_type"),
    ("/v1/intent", {"text": "ok", "top_k": "3"}, "invalid_type"),
    ("/v1/intent", {"text": "ok", "top_k": 99}, "out_of_range"),
    ("/v1/intent", {"text": "ok", "history": "earlier"}, "invalid_type"),
    ("/v1/intent", {"text": "   "}, "empty_text"),
    ("/v1/intent", {"txt": "hello"}, "unknown_field"),
    ("/v1/intent", {}, "missing_field"),
    ("/v1/intent", {"text": "a" * (MAX_CHARS + 1)}, "text_too_long"),
    ("/v1/intent", {"texts": ["a b "] * 2000}, "body_too_large"),
    ("/v1/chat/completions", b"{", "invalid_json"),
    ("/v1/chat/completions", {"messages": "hi"}, "invalid_type"),
    ("/v1/chat/completions", {"messages": [{"role": "tool", "content": "x"}]}, "invalid_value"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": ""}]}, "empty_text"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant",
                                                                              "content": "hello"}]}, "invalid_value"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "out_of_range"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "tools": [{"x": 1}]}, "unsupported"),
]


def test_every_bad_request_is_a_one_line_4xx_and_the_server_goes_on(server):
    for path, body, code in BAD_REQUESTS:
        status, _, payload = call(server.port, "POST", path, body)
        one_line_error(status, payload, code)
        assert status == (413 if code == "body_too_large" else 400), (path, body, status)
    error = one_line_error(*call(server.port, "POST", "/v1/intent", {"txt": "x"})[::2])
    assert "did you mean text?" in error["error"]["message"]
    one_line_error(*call(server.port, "GET", "/v1/nothing")[::2], code="not_found")
    one_line_error(*call(server.port, "GET", "/v1/intent")[::2], code="bad_method")
    status, body, _ = call(server.port, "POST", "/v1/intent", {"text": "refund please"})
    assert status == 200 and body["label"]


def test_binding_beyond_this_machine_needs_an_api_key(exports, capsys, monkeypatch):
    from cs_lightning.commands.serve import main

    monkeypatch.delenv("CS_SERVE_API_KEY", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main(["--intent", str(exports["intent"]), "--host", "0.0.0.0"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cs-serve: error: --host: 0.0.0.0 accepts connections from other machines")
    assert len(err.splitlines()) == 1 and "--api-key" in err
    with pytest.raises(SystemExit):
        main(["--reply", str(exports["intent"])])  # an intent export given as a reply model
    assert "holds an intent model, not a reply model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--intent", str(exports["intent"]), "--onnx"])
    err = capsys.readouterr().err.strip()
    assert "has no ONNX model" in err and "cs-export --onnx" in err and len(err.splitlines()) == 1


def test_api_key_and_sigterm_finish_the_request_in_flight(exports):
    """With a key: 401 without it, answers with it. SIGTERM while a request is arriving: that request is answered,
    new connections are refused, the process exits 0."""
    srv = Server(exports["root"], "--intent", str(exports["intent"]), "--api-key", "s3cret")
    try:
        srv.wait_ready()
        one_line_error(*call(srv.port, "POST", "/v1/intent", {"text": "refund please"})[::2], code="invalid_api_key")
        one_line_error(*call(srv.port, "POST", "/v1/intent", {"text": "refund please"},
                             {"Authorization": "Bearer wrong"})[::2], code="invalid_api_key")
        assert call(srv.port, "GET", "/metrics")[0] == 401
        assert call(srv.port, "POST", "/v1/intent", {"text": "refund please"}, {"X-API-Key": "s3cret"})[0] == 200
        status, body, _ = call(srv.port, "POST", "/v1/intent", {"text": "refund please"},
                               {"Authorization": "Bearer s3cret"})
        assert status == 200
        # a request half sent when SIGTERM arrives
        payload = json.dumps({"text": "refund please"}).encode()
        sock = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
        sock.sendall(b"POST /v1/intent HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\n"
                     b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(payload) + payload[:5])
        time.sleep(0.3)
        srv.proc.send_signal(signal.SIGTERM)
        time.sleep(0.7)
        with pytest.raises(OSError):  # no new connections while it drains
            socket.create_connection(("127.0.0.1", srv.port), timeout=2).close()
        sock.sendall(payload[5:])
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        sock.close()
        head, _, rest = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), answer
        assert json.loads(rest) == body
        assert srv.proc.wait(30) == 0
    finally:
        srv.stop()


def onnx_of(folder: Path, path: Path) -> None:
    """The intent export in ``folder`` written to ``path`` as ONNX by torch.onnx.export (TorchScript), batch and
    sequence dynamic."""
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    ids = torch.ones(2, 7, dtype=torch.long)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    torch.onnx.export(model, (ids, torch.ones_like(ids), torch.zeros_like(ids)), str(path),
                      input_names=names, output_names=["logits"], dynamo=False,
                      dynamic_axes={n: {0: "batch", 1: "sequence"} for n in names})


def test_onnx_runtime_answers_like_pytorch(exports, tmp_path):
    """--onnx serves the export's ONNX file (here written with torch.onnx.export) with the same answers."""
    folder = tmp_path / "intent_onnx"
    shutil.copytree(exports["intent"], folder)
    onnx_of(folder, folder / "model.onnx")
    meta = json.loads((folder / "cs_lightning.json").read_text())
    (folder / "cs_lightning.json").write_text(json.dumps({**meta, "onnx": {"file": "model.onnx", "quantize": None}}))
    srv = Server(tmp_path, "--intent", str(folder), "--onnx")
    try:
        srv.wait_ready()
        assert "ONNX Runtime" in srv.log.read_text()
        longer = TEXTS + ["my parcel is lost and the courier status has not changed for a week, refund please"]
        status, body, _ = call(srv.port, "POST", "/v1/intent", {"texts": longer})  # other shapes than the trace's
        assert status == 200
        for answer, expected in zip(body["results"], offline_intent(folder, longer, temperature=2.0)):
            assert answer["confidence"] == pytest.approx(expected["confidence"], abs=1e-4)
            assert answer["top_k"][0]["label"] == expected["label"]
    finally:
        srv.stop()


def test_int8_onnx_answers_do_not_depend_on_the_batch(exports, tmp_path):
    """An int8 export's activations are quantized with one scale per tensor, so cs-serve runs its texts one at a time:
    a text answered in a batch gets exactly its answer alone."""
    quantization = pytest.importorskip("onnxruntime.quantization")
    folder = tmp_path / "intent_int8"
    shutil.copytree(exports["intent"], folder)
    onnx_of(folder, tmp_path / "fp32.onnx")
    quantization.quantize_dynamic(str(tmp_path / "fp32.onnx"), str(folder / "model.int8.onnx"),
                                  weight_type=quantization.QuantType.QInt8, per_channel=True)
    meta = json.loads((folder / "cs_lightning.json").read_text())
    (folder / "cs_lightning.json").write_text(json.dumps({**meta, "onnx": {"file": "model.int8.onnx",
                                                                           "quantize": "int8"}}))
    srv = Server(tmp_path, "--intent", str(folder), "--onnx")
    try:
        srv.wait_ready()
        longer = TEXTS + ["my parcel is lost and the courier status has not changed for a week, refund please"]
        status, batch, _ = call(srv.port, "POST", "/v1/intent", {"texts": longer})
        assert status == 200
        for text, answer in zip(longer, batch["results"]):
            assert call(srv.port, "POST", "/v1/intent", {"text": text})[1] == answer
    finally:
        srv.stop()
