"""tools/load_test.py end to end on the tiny intent checkpoint: the baseline and cs-serve (PyTorch and --onnx, the
exports made by the tool from the checkpoint), every request answered once and as predicted offline, every malformed
request a 4xx. Slow (three servers and an ONNX export): .ci/run runs it with the slow tests."""

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
pytest.importorskip("onnxruntime")

TOOLS = Path(__file__).resolve().parents[1] / "tools"


@pytest.mark.slow
def test_load_test_reports_every_answer_once_and_right(intent_checkpoint, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(TOOLS))
    import load_test

    code = load_test.main(["--ckpt", str(intent_checkpoint), "--variants", "baseline,torch,onnx", "--requests", "24",
                           "--concurrency", "1,4", "--duration", "60", "--json"])
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and report["correct"], report
    assert [(r["variant"], r["concurrency"]) for r in report["rows"]] == [
        (v, c) for v in ("baseline", "torch", "onnx") for c in (1, 4)]
    for row in report["rows"]:
        assert row["sent"] == row["answered"] == row["server_answered"] == 24
        assert row["lost"] == row["duplicated"] == row["errors"] == row["wrong"] == 0
        assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"] and row["rps"] > 0
    sweep = report["malformed"]
    assert sweep["all_4xx"] and sweep["healthy_after"] and sweep["answers_right_after"]
    assert len(sweep["classes"]) >= 20
    assert report["stopped_cleanly"] and "targets" in report
    assert sys.modules["load_test"].malformed_requests(10, 100)  # importable without starting anything
