"""The GPU check: one prepared script for a machine with one CUDA GPU, at most 8 minutes, one JSON file.

    python tools/gpu_check.py --out gpu_check.json

Run it as is from the repository root (the shared data folder beside the checkout, as for the tests). Parts, in
order of value; each runs as a subprocess with its own timeout, inside try/except, so a failure is recorded in the
JSON and the other parts still run; a part that would start after 7.5 minutes is skipped and marked so:

1. ``epoch_bert_base``: ``tools/benchmark.py`` at BERT-base size (random init) in bf16-mixed, batch 32: one whole
   epoch of Banking77 train per run for the runners plain, cs, hf and hf_grouped, 2 alternated repeats: epoch time
   (median, min-max), samples/s, tokens/s, peak GPU memory and MFU per runner, and the epoch-time ratios
   ``cs_vs_plain``, ``cs_vs_hf``, ``cs_vs_hf_grouped`` (above 1: cs-lightning faster).
2. ``epoch_minilm``: the same with all-MiniLM-L6-v2 (offline weights).
3. ``mfu_fixed_length``: the cs runner at BERT-base size with every batch padded to 128 tokens
   (``--set data.pad_to_buckets=[128]``) on 3,200 examples: MFU on fixed shapes (see benchmark.py's docstring for the
   formula: 6 x matmul parameters x padded tokens / seconds / 989e12 on H100/H200).
4. ``chat_lora``: ``tools/chat_lora_gpu.py``: steps/s, tokens/s and peak GPU memory of ``configs/qwen_reply_lora.yaml``
   (LoRA r=16, bf16-mixed, batch 8 whole conversations) at the real Qwen2.5-0.5B size with random weights.
5. ``precision``: the cs runner at BERT-base size on 3,200 examples in 32-true, 16-mixed and bf16-mixed: epoch time,
   step time, samples/s, peak GPU memory, MFU.
6. ``freeze``: ``tools/freeze_benchmark.py --device cuda``: step time with the bottom 10 of 12 BERT-base blocks frozen
   against none, and their ratio.
7. ``pytest_gpu``: ``pytest -m gpu`` (2 minutes at most) when tests carry the ``gpu`` marker; recorded as skipped
   when none do.

Without a CUDA GPU it stops at once with a one-line message and exit code 2 (and writes that to the JSON). The last
line printed is the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOOLS = REPO / "tools"
TOTAL_S = 480  # the promise: 8 minutes
START_BY_S = 450  # no part starts after 7.5 minutes
MARGIN_S = 10  # a part's timeout ends this long before TOTAL_S


def run_part(cmd: list[str], timeout: float, env: dict) -> tuple[int, str, float]:
    """Run ``cmd`` in its own process group; kill the whole group (its children too) on timeout.
    Returns exit code (-9 on timeout), the output and the seconds taken."""
    start = time.time()
    with tempfile.TemporaryFile(mode="w+", encoding="utf-8") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=str(REPO), env=env,
                                start_new_session=True)
        try:
            code = proc.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = -9
        out.seek(0)
        return code, out.read(), time.time() - start


def last_json(text: str) -> dict:
    """The last line of ``text`` that is a JSON object."""
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    raise ValueError("no JSON line in the output")


def tail(text: str, lines: int = 12) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])[-3000:]


def gpu_names() -> dict:
    """Name and memory of the GPUs from nvidia-smi, so this process never creates a CUDA context of its own (the
    parts' subprocesses get the whole card)."""
    try:
        text = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30).stdout
        rows = [line.split(",") for line in text.strip().splitlines() if line.strip()]
        return {"name": rows[0][0].strip(), "memory": rows[0][1].strip()} if rows else {}
    except (OSError, subprocess.SubprocessError, IndexError):
        return {}


class Check:
    def __init__(self, out: str | None):
        self.started = time.time()
        self.out = out
        self.result: dict = {"ok": True, "parts": {}, "budget_s": TOTAL_S}
        self.env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
                    "TRANSFORMERS_OFFLINE": "1"}

    def elapsed(self) -> float:
        return time.time() - self.started

    def timeout(self, wanted: float) -> float:
        return min(wanted, TOTAL_S - MARGIN_S - self.elapsed())

    def part(self, name: str, fn, *args) -> None:
        if self.elapsed() > START_BY_S:
            self.result["parts"][name] = {"ok": False, "skipped": f"time budget: {self.elapsed():.0f} s had passed"}
            print(f"gpu_check: {name}: skipped (time budget)", flush=True)
            return
        begin = time.time()
        print(f"gpu_check: [{self.elapsed():4.0f}s] {name} ...", flush=True)
        try:
            res = fn(*args)
            res.setdefault("ok", True)
        except Exception as exc:  # one failing part must not lose the others
            res = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[-3000:]}
        res["seconds"] = round(time.time() - begin, 1)
        self.result["parts"][name] = res
        print(f"gpu_check: [{self.elapsed():4.0f}s] {name}: {'ok' if res['ok'] else 'FAILED'}", flush=True)

    def bench(self, extra: list[str], wanted: float) -> dict:
        fd, path = tempfile.mkstemp(prefix="gpu_check_", suffix=".json")
        os.close(fd)
        try:
            cmd = [sys.executable, str(TOOLS / "benchmark.py"), "--device", "cuda", "--cases", "banking77",
                   "--child-timeout", "90", "--out", path] + extra
            code, text, _ = run_part(cmd, self.timeout(wanted), self.env)
            if code != 0:
                why = " (timed out)" if code == -9 else ""
                raise RuntimeError(f"benchmark.py exit code {code}{why}:\n{tail(text)}")
            return json.loads(Path(path).read_text(encoding="utf-8"))
        finally:
            Path(path).unlink(missing_ok=True)

    # ------------------------------------------------------------------ the parts
    def epoch(self, model_size: str, wanted: float) -> dict:
        data = self.bench(["--model-size", model_size, "--precision", "bf16-mixed", "--repeats", "2"], wanted)
        keys = ("epoch_s", "epoch_s_min", "epoch_s_max", "samples_per_s", "tokens_per_s", "step_ms", "mfu",
                "peak_gpu_mb", "startup_s", "pad_fraction", "repeats", "epoch_s_all", "error")
        runners = {name: {k: s[k] for k in keys if k in s} for name, s in data["runners"].items()}
        ok = all(s.get("repeats") for s in data["runners"].values())
        return {"ok": ok, "cs_vs_plain": data["cs_vs_plain"], "cs_vs_hf": data["cs_vs_hf"],
                "cs_vs_hf_grouped": data["cs_vs_hf_grouped"], "epoch": data.get("epoch"), "runners": runners,
                "machine": data.get("machine"), "settings": data.get("settings")}

    def epoch_bert_base(self) -> dict:
        return self.epoch("bert-base", 200)

    def epoch_minilm(self) -> dict:
        return self.epoch("minilm", 140)

    def mfu_fixed_length(self) -> dict:
        data = self.bench(["--model-size", "bert-base", "--precision", "bf16-mixed", "--runners", "cs",
                           "--repeats", "1", "--train-limit", "3200", "--set", "data.pad_to_buckets=[128]"], 60)
        cs = data["runners"]["cs"]
        if not cs.get("repeats"):
            raise RuntimeError(cs.get("error", "no successful run"))
        return {k: cs.get(k) for k in ("mfu", "epoch_s", "step_ms", "samples_per_s", "mean_padded_length",
                                       "peak_gpu_mb", "params_matmul")}

    def precision(self) -> dict:
        rows, errors = {}, {}
        for precision in ("32-true", "16-mixed", "bf16-mixed"):
            if self.elapsed() > START_BY_S:
                errors[precision] = "skipped: time budget"
                continue
            try:
                data = self.bench(["--model-size", "bert-base", "--runners", "cs", "--precision", precision,
                                   "--repeats", "1", "--train-limit", "3200"], 60)
                cs = data["runners"]["cs"]
                if not cs.get("repeats"):
                    raise RuntimeError(cs.get("error", "no successful run"))
                rows[precision] = {k: cs.get(k) for k in ("epoch_s", "step_ms", "samples_per_s", "peak_gpu_mb",
                                                          "mfu", "repeats")}
            except Exception as exc:
                errors[precision] = f"{type(exc).__name__}: {exc}"[-2000:]
        out = {"ok": not errors, "rows": rows}
        if errors:
            out["errors"] = errors
        if "32-true" in rows and "bf16-mixed" in rows and rows["bf16-mixed"]["step_ms"]:
            out["bf16_speedup_vs_32"] = round(rows["32-true"]["step_ms"] / rows["bf16-mixed"]["step_ms"], 2)
        return out

    def chat_lora(self) -> dict:
        cmd = [sys.executable, str(TOOLS / "chat_lora_gpu.py"), "--steps", "30", "--warmup", "5"]
        code, text, _ = run_part(cmd, self.timeout(120), self.env)
        if code != 0:
            raise RuntimeError(f"chat_lora_gpu.py exit code {code}{' (timed out)' if code == -9 else ''}:\n"
                               f"{tail(text)}")
        return last_json(text)

    def freeze(self) -> dict:
        cmd = [sys.executable, str(TOOLS / "freeze_benchmark.py"), "--device", "cuda", "--steps", "10", "--rounds", "3"]
        code, text, _ = run_part(cmd, self.timeout(90), self.env)
        if code != 0:
            raise RuntimeError(f"freeze_benchmark.py exit code {code}{' (timed out)' if code == -9 else ''}:\n"
                               f"{tail(text)}")
        return last_json(text)

    def pytest_gpu(self) -> dict:
        cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider"]
        code, text, _ = run_part(cmd, self.timeout(120), self.env)
        if code == 5:
            return {"ok": True, "skipped": "no tests carry the gpu marker", "summary": tail(text, 3)}
        return {"ok": code == 0, "exit_code": code, "timed_out": code == -9, "summary": tail(text, 15)}

    # ------------------------------------------------------------------ the whole
    def finish(self, code: int = 0) -> int:
        self.result["elapsed_s"] = round(self.elapsed(), 1)
        line = json.dumps(self.result)
        if self.out:
            Path(self.out).write_text(json.dumps(self.result, indent=2) + "\n", encoding="utf-8")
        print(line, flush=True)
        return code


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu_check.json", help="the JSON file to write (default: gpu_check.json)")
    args = parser.parse_args(argv)
    check = Check(args.out)
    import torch

    if not torch.cuda.is_available():
        message = (f"no CUDA GPU: torch.cuda.is_available() is False (torch {torch.__version__}, CUDA build "
                   f"{torch.version.cuda or 'none'}); run this on a machine with one NVIDIA GPU")
        print(f"gpu_check: {message}", file=sys.stderr, flush=True)
        check.result.update({"ok": False, "error": message})
        return check.finish(2)
    check.result["device"] = {"count": torch.cuda.device_count(), "torch": torch.__version__,
                              "cuda": torch.version.cuda, **gpu_names()}
    check.part("epoch_bert_base", check.epoch_bert_base)
    check.part("epoch_minilm", check.epoch_minilm)
    check.part("mfu_fixed_length", check.mfu_fixed_length)
    check.part("chat_lora", check.chat_lora)
    check.part("precision", check.precision)
    check.part("freeze", check.freeze)
    check.part("pytest_gpu", check.pytest_gpu)
    check.result["ok"] = all(p.get("ok") for p in check.result["parts"].values())
    return check.finish(0 if check.result["ok"] else 1)


if __name__ == "__main__":
    sys.exit(main())
