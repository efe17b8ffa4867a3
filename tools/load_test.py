"""A bounded load test of ``cs-serve``'s ``POST /v1/intent`` against a baseline, on 127.0.0.1 only.

The baseline is what one would write without cs-serve: a plain FastAPI endpoint (in this file) that calls
``transformers.pipeline("text-classification", model=DIR)`` on each request's one text, the pipeline built once at
startup, same export, same machine. Each variant is started as a subprocess on a free port of 127.0.0.1, waited for
(``GET /health``), loaded at each concurrency with a fixed number of requests (capped by a duration per level, so the
run stops by itself), and stopped:

    baseline        the pipeline endpoint (PyTorch)
    torch           cs-serve --intent DIR
    onnx            cs-serve --intent DIR --onnx           (an export made with cs-export --onnx)
    int8            cs-serve --intent DIR --onnx           (an export made with cs-export --onnx --quantize int8)

Every request sends a different text; each answer is checked against what the export predicts offline (the label,
and the confidence up to rounding), computed once before the servers start: transformers' pipeline for baseline and
torch (cs-serve's answers with the export's temperature and out-of-scope threshold applied), onnxruntime one text at
a time on the export's ONNX file for onnx and int8. It also checks that every request
got exactly one answer: one HTTP answer per request on the client, and the server's count of answered requests
(``/metrics`` for cs-serve, ``/count`` for the baseline) grew by exactly the number sent. At the end, malformed
requests of every class go to the last cs-serve variant: each must be a 4xx, and ``/health`` still ready after.

    cs-export --onnx --quantize int8 CKPT /tmp/int8     # or let --ckpt make the three exports in a temp folder
    python tools/load_test.py --ckpt logs/b77_lora/checkpoints/best.ckpt --texts ../shared/data/banking77/test.csv
    python tools/load_test.py --export /tmp/pt --onnx-export /tmp/onnx --int8-export /tmp/int8 --texts FILE --json

Prints a table (requests/s, p50/p95/p99 latency in ms, lost and wrong answers per variant and concurrency), the
targets (int8 at concurrency 32: at least 3x the baseline's requests/s; int8 p99 under 150 ms at concurrency 8),
then one JSON line. Exits 1 when an answer was lost, duplicated or wrong, or a malformed request was not a 4xx.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

VARIANTS = ("baseline", "torch", "onnx", "int8")
HOST = "127.0.0.1"
ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
#: how far a served confidence may be from the offline one (rounding of padded batches; cs-serve runs int8 exports
#: one text at a time, as offline, since their dynamically quantized activations would depend on the batch)
CONFIDENCE_TOLERANCE = {"baseline": 1e-4, "torch": 1e-4, "onnx": 1e-4, "int8": 1e-4}
TARGET_SPEEDUP, TARGET_P99_MS = 3.0, 150.0


# ---------------------------------------------------------------------- the baseline server (a subprocess)
def baseline_app(folder: str):
    """A plain FastAPI app: ``transformers.pipeline`` per request, as one would write it without cs-serve."""
    import threading

    from fastapi import Body, FastAPI
    from transformers import pipeline

    classifier = pipeline("text-classification", model=folder, device="cpu")
    classifier("warm up")
    app = FastAPI()
    answered, lock = [0], threading.Lock()

    @app.get("/health")
    def health():
        return {"status": "ready"}

    @app.get("/count")
    def count():
        return {"answered": answered[0]}

    @app.post("/v1/intent")
    def intent(text: str = Body(embed=True)):  # a plain def: FastAPI runs it in its thread pool
        result = classifier(text)[0]
        with lock:
            answered[0] += 1
        return {"label": result["label"], "confidence": result["score"]}

    return app


def run_baseline(folder: str, port: int) -> None:
    import uvicorn

    uvicorn.run(baseline_app(folder), host=HOST, port=port, log_level="warning", access_log=False)


# ---------------------------------------------------------------------- exports and offline predictions
def make_exports(ckpt: str, root: Path, want: set[str]) -> dict[str, Path]:
    """The PyTorch, ONNX and int8 ONNX exports of a checkpoint (cs-export), as needed."""
    out = {}
    for name, flags in (("pt", []), ("onnx", ["--onnx"]), ("int8", ["--onnx", "--quantize", "int8"])):
        if name not in want:
            continue
        folder = root / name
        print(f"load_test: cs-export {' '.join(flags)} {ckpt} {folder}", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "cs_lightning.commands.export", *flags, ckpt, str(folder)],
                       check=True, env={**os.environ, **ENV}, stdout=subprocess.DEVNULL)
        out[name] = folder
    return out


def read_texts(path: str | None, count: int) -> list[str]:
    """``count`` different texts: from an intent file (CSV/JSONL with ``text``) or a text file (one per line), or
    made from the export self-check's sample texts."""
    texts: list[str] = []
    if path:
        if path.endswith((".csv", ".jsonl", ".json")):
            from cs_lightning.data.schema import read_intent_records

            texts = [r.text for r in read_intent_records(path)]
        else:
            texts = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        from cs_lightning.export import SAMPLE_TEXTS

        texts = [f"{t} (order {i})" for i in range(count) for t in SAMPLE_TEXTS]
    texts = list(dict.fromkeys(" ".join(t.split()) for t in texts))  # different texts: each request is its own
    if len(texts) < count:
        raise SystemExit(f"load_test: --texts has {len(texts)} different texts, fewer than --requests {count}")
    return texts[:count]


def _softmax(row):
    import numpy as np

    e = np.exp(row - row.max())
    return e / e.sum()


def offline_logits(folder: Path, texts: list[str], onnx: bool) -> list:
    """The export's logits for each text: transformers' pipeline on the PyTorch weights (in batches: float32 answers
    do not depend on the batch beyond rounding), or onnxruntime on the export's ONNX file one text at a time (int8
    activations are quantized per call, so a text's answer is the one it gets alone)."""
    import numpy as np

    from cs_lightning.export import read_export

    if onnx:
        import onnxruntime
        from transformers import AutoTokenizer

        meta = read_export(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = 1
        session = onnxruntime.InferenceSession(str(folder / meta["onnx"]["file"]), options,
                                               providers=["CPUExecutionProvider"])
        names = {i.name for i in session.get_inputs()}
        out = []
        for text in texts:
            enc = tokenizer([text], truncation=True, max_length=int(meta.get("max_length") or 128), return_tensors="np")
            out.append(session.run(None, {k: v.astype("int64") for k, v in enc.items() if k in names})[0][0])
        return out
    from transformers import pipeline

    classifier = pipeline("text-classification", model=str(folder), device="cpu")
    labels = classifier.model.config.id2label
    out = []
    for scores in classifier(texts, top_k=None, function_to_apply="none", batch_size=32, truncation=True):
        by_label = {s["label"]: s["score"] for s in scores}
        out.append(np.array([by_label[labels[i]] for i in range(len(labels))]))
    return out


def _softmax(row):
    import numpy as np

    e = np.exp(row - row.max())
    return e / e.sum()


def expected_answers(folder: Path, logits: list, served: bool) -> list[dict]:
    """Label and confidence of each text from its logits: as the pipeline answers (``served`` false: the baseline),
    or as cs-serve documents it (the export's temperature and out-of-scope threshold applied)."""
    import numpy as np

    from cs_lightning.export import read_export

    meta = read_export(folder)
    names = list(meta.get("labels") or [])
    if not served:
        return [{"label": names[int(np.argmax(row))], "confidence": float(_softmax(np.asarray(row, np.float64)).max())}
                for row in logits]
    temperature = float(meta.get("temperature") or 1.0)
    oos, threshold = meta.get("oos_label"), meta.get("oos_threshold")
    out = []
    for row in logits:
        row = np.asarray(row, dtype=np.float64)
        calibrated = _softmax(row / temperature)
        best = int(calibrated.argmax())
        confidence = float(calibrated[best])
        score = float(_softmax(row).max()) if meta.get("oos_threshold_on") == "raw" else confidence
        label = oos if oos and threshold is not None and score < float(threshold) else names[best]
        out.append({"label": label, "confidence": confidence})
    return out


# ---------------------------------------------------------------------- servers
def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Process:
    """A server subprocess on a free port of 127.0.0.1, ready once ``GET /health`` answers 200."""

    def __init__(self, name: str, command: list[str], log_dir: Path):
        self.name, self.port = name, free_port()
        self.log = log_dir / f"{name}.log"
        self.proc = subprocess.Popen([*command, "--port", str(self.port)], stdout=self.log.open("wb"),
                                     stderr=subprocess.STDOUT, env={**os.environ, **ENV}, cwd=REPO)
        self.url = f"http://{HOST}:{self.port}"

    def wait_ready(self, timeout: float) -> float:
        import httpx

        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.proc.poll() is not None:
                raise SystemExit(f"load_test: {self.name} exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return time.monotonic() - start
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise SystemExit(f"load_test: {self.name} not ready after {timeout:.0f}s: {self.log.read_text()[-2000:]}")

    def answered(self) -> int:
        """How many intent requests the server says it answered with 200."""
        import httpx

        if self.name == "baseline":
            return int(httpx.get(f"{self.url}/count", timeout=10).json()["answered"])
        for line in httpx.get(f"{self.url}/metrics", timeout=10).text.splitlines():
            if line.startswith('cs_serve_requests_total{endpoint="/v1/intent",status="200"}'):
                return int(float(line.split()[-1]))
        return 0

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def command_of(variant: str, folder: Path) -> list[str]:
    if variant == "baseline":
        return [sys.executable, __file__, "--baseline-server", str(folder)]
    serve = [sys.executable, "-m", "cs_lightning.commands.serve", "--intent", str(folder), "--device", "cpu"]
    return serve + (["--onnx"] if variant in ("onnx", "int8") else [])


# ---------------------------------------------------------------------- load
async def load(url: str, texts: list[str], concurrency: int, duration: float) -> dict:
    """``len(texts)`` requests, ``concurrency`` at a time, no new one after ``duration`` seconds; per request: the
    number of answers, status, body and latency."""
    import httpx

    results: list[list] = [[] for _ in texts]
    next_index = [0]
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=httpx.Timeout(60.0)) as client:
        start = time.perf_counter()
        deadline = start + duration

        async def worker():
            while next_index[0] < len(texts) and time.perf_counter() < deadline:
                i = next_index[0]
                next_index[0] += 1
                sent = time.perf_counter()
                try:
                    resp = await client.post("/v1/intent", json={"text": texts[i]})
                    body = resp.json() if resp.headers.get("content-type", "").startswith("application/json") \
                        else resp.text
                    results[i].append((resp.status_code, body, time.perf_counter() - sent))
                except (httpx.HTTPError, json.JSONDecodeError) as err:
                    results[i].append((None, f"{type(err).__name__}: {err}", time.perf_counter() - sent))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return {"sent": next_index[0], "results": results[:next_index[0]], "elapsed": elapsed}


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    if not sorted_values:
        return float("nan")
    rank = max(1, -(-len(sorted_values) * q // 100))
    return sorted_values[int(rank) - 1]


def score(variant: str, run: dict, expected: list[dict], answered_by_server: int) -> dict:
    """Latencies and the checks of one level: lost (no HTTP answer), duplicated, errors (not 200), wrong (a label,
    or a confidence beyond the variant's tolerance, unlike the offline prediction of the request's text)."""
    tolerance = CONFIDENCE_TOLERANCE[variant]
    latencies, lost, duplicated, errors, wrong, examples, worst = [], 0, 0, 0, 0, [], 0.0
    for i, answers in enumerate(run["results"]):
        if not answers or answers[0][0] is None:
            lost += 1
            if answers and len(examples) < 3:
                examples.append({"request": i, "error": answers[0][1][:200]})
            continue
        duplicated += len(answers) - 1
        status, body, latency = answers[0]
        latencies.append(latency)
        if status != 200 or not isinstance(body, dict):
            errors += 1
            if len(examples) < 3:
                examples.append({"request": i, "status": status, "body": str(body)[:200]})
            continue
        diff = abs(float(body["confidence"]) - expected[i]["confidence"])
        worst = max(worst, diff)
        if body["label"] != expected[i]["label"] or diff > tolerance:
            wrong += 1
            if len(examples) < 3:
                examples.append({"request": i, "got": [body["label"], body["confidence"]],
                                 "expected": [expected[i]["label"], round(expected[i]["confidence"], 6)]})
    latencies.sort()
    ok = len(latencies) - errors
    return {"variant": variant, "sent": run["sent"], "answered": len(latencies), "lost": lost, "duplicated": duplicated,
            "errors": errors, "wrong": wrong, "server_answered": answered_by_server,
            "server_count_ok": answered_by_server == ok, "seconds": round(run["elapsed"], 2),
            "rps": round(ok / run["elapsed"], 1) if run["elapsed"] else 0.0,
            "p50_ms": round(1000 * percentile(latencies, 50), 1), "p95_ms": round(1000 * percentile(latencies, 95), 1),
            "p99_ms": round(1000 * percentile(latencies, 99), 1), "max_confidence_diff": round(worst, 6),
            "examples": examples}


# ---------------------------------------------------------------------- malformed requests
def malformed_requests(max_chars: int, max_body: int) -> list[tuple[str, str, str, bytes, dict]]:
    """(class, method, path, body, headers) of every kind of bad request."""
    js = {"Content-Type": "application/json"}
    return [
        ("invalid JSON", "POST", "/v1/intent", b'{"text": ', js),
        ("not JSON at all", "POST", "/v1/intent", b"text=hello", {"Content-Type": "application/x-www-form-urlencoded"}),
        ("empty body", "POST", "/v1/intent", b"", js),
        ("non-UTF-8 bytes", "POST", "/v1/intent", b'{"text": "caf\xe9 \xff"}', js),
        ("lone surrogate", "POST", "/v1/intent", b'{"text": "\\ud800"}', js),
        ("array instead of object", "POST", "/v1/intent", b'["hello"]', js),
        ("text not a string", "POST", "/v1/intent", b'{"text": 5}', js),
        ("texts not a list", "POST", "/v1/intent", b'{"texts": "hello"}', js),
        ("null in texts", "POST", "/v1/intent", b'{"texts": ["ok", null]}', js),
        ("top_k wrong type", "POST", "/v1/intent", b'{"text": "ok", "top_k": "3"}', js),
        ("top_k out of range", "POST", "/v1/intent", b'{"text": "ok", "top_k": 100000}', js),
        ("history wrong type", "POST", "/v1/intent", b'{"text": "ok", "history": "earlier"}', js),
        ("empty text", "POST", "/v1/intent", b'{"text": ""}', js),
        ("blank text", "POST", "/v1/intent", b'{"text": "   \\n\\t "}', js),
        ("missing field", "POST", "/v1/intent", b"{}", js),
        ("unknown field", "POST", "/v1/intent", b'{"txt": "hello"}', js),
        ("too long text", "POST", "/v1/intent", json.dumps({"text": "a" * (max_chars + 1)}).encode(), js),
        ("oversized body", "POST", "/v1/intent", json.dumps({"texts": ["refund"] * (max_body // 8)}).encode(), js),
        ("deeply nested JSON", "POST", "/v1/intent", b"[" * 100000 + b"]" * 100000, js),
        ("wrong method", "GET", "/v1/intent", b"", {}),
        ("unknown path", "POST", "/v1/nothing", b"{}", js),
        ("no reply model", "POST", "/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}]}', js),
    ]


def malformed_sweep(server: Process, check_text: str, expected: dict) -> dict:
    import httpx

    answers = []
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for name, method, path, body, headers in malformed_requests(2000, 1 << 20):
            try:
                status = client.request(method, path, content=body, headers=headers).status_code
            except httpx.HTTPError as err:
                status = f"{type(err).__name__}"
            answers.append({"class": name, "status": status})
        health = client.get("/health")
        after = client.post("/v1/intent", json={"text": check_text})
    healthy = health.status_code == 200 and health.json().get("status") == "ready" and server.proc.poll() is None
    right = after.status_code == 200 and after.json()["label"] == expected["label"]
    return {"server": server.name, "classes": answers,
            "all_4xx": all(isinstance(a["status"], int) and 400 <= a["status"] < 500 for a in answers),
            "healthy_after": healthy, "answers_right_after": right}


# ---------------------------------------------------------------------- main
def table(rows: list[dict]) -> str:
    head = f"{'variant':<9} {'conc':>4} {'sent':>5} {'lost':>4} {'dup':>3} {'err':>3} {'wrong':>5} {'req/s':>7} " \
           f"{'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['variant']:<9} {r['concurrency']:>4} {r['sent']:>5} {r['lost']:>4} {r['duplicated']:>3} "
                     f"{r['errors']:>3} {r['wrong']:>5} {r['rps']:>7.1f} {r['p50_ms']:>7.1f} {r['p95_ms']:>7.1f} {r['p99_ms']:>7.1f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", metavar="DIR", help="an intent export (PyTorch weights): baseline and torch")
    parser.add_argument("--onnx-export", metavar="DIR", help="an export made with cs-export --onnx: onnx")
    parser.add_argument("--int8-export", metavar="DIR", help="an export made with cs-export --onnx --quantize int8")
    parser.add_argument("--ckpt", help="an intent checkpoint: the exports not given are made from it (temp folder)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"which to run (default {','.join(VARIANTS)})")
    parser.add_argument("--texts", metavar="FILE", help="texts to send: an intent CSV/JSONL or one text a line "
                        "(default: variations of the export self-check's sample texts)")
    parser.add_argument("--requests", type=int, default=400, help="requests per variant and concurrency (400)")
    parser.add_argument("--duration", type=float, default=20.0,
                        help="seconds per variant and concurrency at most: no request starts later (20)")
    parser.add_argument("--concurrency", default="1,8,32", help="concurrent clients, comma-separated (1,8,32)")
    parser.add_argument("--startup-timeout", type=float, default=180.0, help="seconds a server may take to load")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    parser.add_argument("--baseline-server", metavar="DIR", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.baseline_server:
        run_baseline(args.baseline_server, args.port)
        return 0
    os.environ.update(ENV)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    levels = [int(c) for c in args.concurrency.split(",")]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if unknown := set(variants) - set(VARIANTS):
        parser.error(f"unknown variants {sorted(unknown)}; choose from {','.join(VARIANTS)}")
    if args.requests < 1 or args.duration <= 0 or min(levels) < 1:
        parser.error("--requests, --duration and --concurrency must be positive")
    say = (lambda *a: None) if args.json else (lambda *a: print(*a, file=sys.stderr, flush=True))

    with tempfile.TemporaryDirectory(prefix="cs-load-test-") as tmp:
        tmp = Path(tmp)
        folders = {"pt": args.export, "onnx": args.onnx_export, "int8": args.int8_export}
        need = {{"baseline": "pt", "torch": "pt"}.get(v, v) for v in variants}
        missing = {k for k in need if not folders[k]}
        if missing and not args.ckpt:
            parser.error(f"give --ckpt, or the exports: {', '.join(sorted(missing))}")
        folders.update(make_exports(args.ckpt, tmp / "exports", missing) if missing else {})
        folders = {k: Path(v) for k, v in folders.items() if v}
        texts = read_texts(args.texts, args.requests)
        bound = len(variants) * (args.startup_timeout + len(levels) * (args.duration + 60))
        say(f"load_test: {len(texts)} different texts; {len(variants)} variants x concurrency {levels}; "
            f"at most {args.requests} requests or {args.duration:g}s per level; whole run bounded by ~{bound:.0f}s")

        expected: dict[str, list[dict]] = {}
        for key in sorted(need):
            start = time.perf_counter()
            logits = offline_logits(folders[key], texts, onnx=key != "pt")
            for variant in variants:
                if {"baseline": "pt", "torch": "pt"}.get(variant, variant) == key:
                    expected[variant] = expected_answers(folders[key], logits, served=variant != "baseline")
            say(f"load_test: offline predictions of {folders[key]} ({'onnxruntime' if key != 'pt' else 'pipeline'}) "
                f"in {time.perf_counter() - start:.1f}s")

        rows, sweep, startup, exit_codes = [], None, {}, {}
        for variant in variants:
            folder = folders[{"baseline": "pt", "torch": "pt"}.get(variant, variant)]
            server = Process(variant, command_of(variant, folder), tmp)
            try:
                startup[variant] = round(server.wait_ready(args.startup_timeout), 1)
                say(f"load_test: {variant} ready in {startup[variant]}s ({server.url})")
                asyncio.run(load(server.url, texts[:min(len(texts), 2 * max(levels))], max(levels), 30))  # warm-up
                for level in levels:
                    before = server.answered()
                    run = asyncio.run(load(server.url, texts, level, args.duration))
                    row = score(variant, run, expected[variant], server.answered() - before)
                    row["concurrency"] = level
                    rows.append(row)
                    say(table([row]).splitlines()[-1])
                if variant != "baseline":
                    sweep = malformed_sweep(server, texts[0], expected[variant][0])
            finally:
                exit_codes[variant] = server.stop()

    def row_of(variant, level):
        return next((r for r in rows if r["variant"] == variant and r["concurrency"] == level), None)

    targets = {}
    base32, int32, int8_8 = row_of("baseline", 32), row_of("int8", 32), row_of("int8", 8)
    if base32 and int32:
        speedup = int32["rps"] / base32["rps"] if base32["rps"] else float("inf")
        targets["int8_vs_baseline_rps_at_32"] = {"value": round(speedup, 2), "target": TARGET_SPEEDUP,
                                                 "met": speedup >= TARGET_SPEEDUP}
    if int8_8:
        targets["int8_p99_ms_at_8"] = {"value": int8_8["p99_ms"], "target": TARGET_P99_MS,
                                       "met": int8_8["p99_ms"] < TARGET_P99_MS}
    correct = all(r["lost"] == r["duplicated"] == r["errors"] == r["wrong"] == 0 and r["server_count_ok"]
                  and r["sent"] == r["answered"] for r in rows)
    correct = correct and (sweep is None or (sweep["all_4xx"] and sweep["healthy_after"]
                                             and sweep["answers_right_after"]))
    stopped = all(code == 0 for name, code in exit_codes.items() if name != "baseline")  # cs-serve: SIGTERM -> 0
    try:
        load_average = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load_average = None
    report = {"rows": rows, "targets": targets, "malformed": sweep, "startup_s": startup, "exit_codes": exit_codes,
              "correct": correct, "stopped_cleanly": stopped, "cpus": os.cpu_count(), "load_average": load_average,
              "requests": args.requests, "duration": args.duration, "concurrency": levels,
              "exports": {k: str(v) for k, v in folders.items()}}
    if not args.json:
        print(table(rows))
        for name, t in targets.items():
            print(f"target {name}: {t['value']} (target {'>=' if 'rps' in name else '<'} {t['target']}): "
                  f"{'met' if t['met'] else 'NOT met'}")
        if sweep:
            bad = [a for a in sweep["classes"] if not (isinstance(a["status"], int) and 400 <= a["status"] < 500)]
            print(f"malformed requests ({sweep['server']}): {len(sweep['classes'])} classes, "
                  f"{'all 4xx' if not bad else f'NOT 4xx: {bad}'}; healthy after: {sweep['healthy_after']}; "
                  f"answers right after: {sweep['answers_right_after']}")
        print(f"answers: {'every request answered once and right' if correct else 'LOST, DUPLICATED OR WRONG answers'}"
              f"; servers stopped with exit status {exit_codes}; load average {load_average} on {os.cpu_count()} CPUs")
    print(json.dumps(report, separators=(",", ":")))
    return 0 if correct else 1


if __name__ == "__main__":
    sys.exit(main())
