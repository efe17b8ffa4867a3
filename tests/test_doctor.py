"""cs-doctor: the report on this machine (JSON and table), hard failures, and checks that crash."""

import functools
import json
import re
import sys
from pathlib import Path

import pytest

from cs_lightning.commands import doctor

EXPECTED_CHECKS = ["python", "torch", "torch build", "cuda", "gpu", "bf16", "cpu cores", "ram", "log dir", "disk",
                   "pip check", "libraries", "cs-lightning", "pretrained model", "tiny pass"]


def run_doctor(capsys, *argv):
    """Run cs-doctor in-process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_:
        doctor.main(list(argv))
    captured = capsys.readouterr()
    return exit_.value.code, captured.out, captured.err


def rows_by_name(report):
    return {row["name"]: row for row in report["checks"]}


def replace_check(monkeypatch, original, replacement):
    """Swap one entry of doctor.CHECKS for ``replacement`` (which keeps the original's name and hardness)."""
    functools.update_wrapper(replacement, original)
    monkeypatch.setattr(doctor, "CHECKS", [replacement if fn is original else fn for fn in doctor.CHECKS])


def test_json_report_on_this_machine(capsys):
    code, out, _ = run_doctor(capsys, "--json")
    report = json.loads(out)  # stdout holds the JSON and nothing else
    assert code == 0
    assert report["ok"] is True
    assert [row["name"] for row in report["checks"]] == EXPECTED_CHECKS
    assert [fn.check_name for fn in doctor.CHECKS] == EXPECTED_CHECKS
    for row in report["checks"]:
        assert set(row) == {"name", "status", "value", "fix"}
        assert row["status"] in ("ok", "warn"), row
        assert row["value"]
        assert bool(row["fix"]) == (row["status"] != "ok"), row  # a fix for every non-ok row, none for ok rows
    rows = rows_by_name(report)
    for hard in ("torch", "cs-lightning", "log dir", "tiny pass"):
        assert rows[hard]["status"] == "ok", rows[hard]
    assert "cpu: loss" in rows["tiny pass"]["value"]
    assert "created" in rows["log dir"]["value"]
    assert Path("logs").is_dir() and not list(Path("logs").iterdir())  # the write probe was deleted


def test_unwritable_log_dir_is_a_hard_failure(capsys):
    Path("somefile").write_text("not a folder\n")
    code, out, _ = run_doctor(capsys, "--json", "--log-dir", "somefile/logs")
    report = json.loads(out)
    assert code == 1
    assert report["ok"] is False
    row = rows_by_name(report)["log dir"]
    assert row["status"] == "FAIL"
    assert "somefile" in row["value"] and "not writable" in row["value"]
    assert row["fix"]
    assert [row["name"] for row in report["checks"]] == EXPECTED_CHECKS  # the other checks still ran
    assert rows_by_name(report)["tiny pass"]["status"] == "ok"


def test_crashing_check_becomes_a_warning_row(monkeypatch, capsys):
    def boom(options):
        raise RuntimeError("sensor exploded")

    replace_check(monkeypatch, doctor.check_ram, boom)
    code, out, err = run_doctor(capsys, "--json")
    assert code == 0  # ram is not a hard check: a warning
    assert "Traceback" not in out + err
    report = json.loads(out)
    assert [row["name"] for row in report["checks"]] == EXPECTED_CHECKS
    row = rows_by_name(report)["ram"]
    assert row["status"] == "warn"
    assert "RuntimeError: sensor exploded" in row["value"]
    assert row["fix"]


def test_crashing_hard_check_fails_without_traceback(monkeypatch, capsys):
    def boom(options):
        raise ValueError("no tensors today")

    replace_check(monkeypatch, doctor.check_tiny_pass, boom)
    monkeypatch.setattr(doctor, "CHECKS", [doctor.check_python, doctor.CHECKS[-1], doctor.check_cpu])
    code, out, err = run_doctor(capsys, "--json")
    assert code == 1
    assert "Traceback" not in out + err
    report = json.loads(out)
    assert report["ok"] is False
    assert [row["name"] for row in report["checks"]] == ["python", "tiny pass", "cpu cores"]  # all still ran
    row = rows_by_name(report)["tiny pass"]
    assert row["status"] == "FAIL"
    assert "ValueError: no tensors today" in row["value"]
    assert row["fix"]


def test_table_names_every_check(capsys):
    code, out, _ = run_doctor(capsys)
    assert code == 0
    for name in EXPECTED_CHECKS:
        assert name in out, name
    assert "FAIL" not in out
    assert "cs-lightning can run here" in out


def test_cpu_build_on_nvidia_machine_advises_cuda_torch(monkeypatch):
    torch = pytest.importorskip("torch")
    if torch.version.cuda:
        pytest.skip("this torch is a CUDA build")
    monkeypatch.setattr(doctor, "_nvidia_gpu_present", lambda: True)
    monkeypatch.setattr(doctor, "_nvidia_smi", lambda: {"driver": "550.54.15", "cuda": "12.4"})
    row = doctor.check_torch_build(doctor.Options())
    assert row.status == "warn"
    assert "NVIDIA GPU found" in row.value
    assert "--index-url https://download.pytorch.org/whl/cu" in row.fix
    assert f"torch=={torch.__version__.split('+')[0]} " in row.fix
    assert "CUDA up to 12.4" in row.fix
    assert doctor.check_cuda(doctor.Options()).fix == row.fix


def test_pip_check_conflicts_are_a_warning(monkeypatch):
    class Done:
        returncode = 1
        stdout = "foo 1.0 has requirement bar>=2, but you have bar 1.5.\n"
        stderr = ""

    monkeypatch.setattr(doctor.subprocess, "run", lambda *args, **kwargs: Done())
    row = doctor.check_pip(doctor.Options())
    assert row.status == "warn"
    assert "foo 1.0 has requirement bar>=2" in row.value
    assert row.fix


def test_without_torch_every_check_still_reports(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    rows = {fn.check_name: doctor.run_check(fn, doctor.Options()) for fn in
            (doctor.check_torch, doctor.check_cuda, doctor.check_tiny_pass, doctor.check_cpu)}
    assert rows["torch"].status == "FAIL" and "not importable" in rows["torch"].value
    assert "pip install torch" in rows["torch"].fix
    assert rows["cuda"].status == "warn" and "install torch" in rows["cuda"].fix
    assert rows["tiny pass"].status == "FAIL"
    assert rows["cpu cores"].status in ("ok", "warn")
    assert doctor.exit_code(list(rows.values())) == 1


def test_libraries_row_names_every_runtime_library_with_its_version():
    row = doctor.check_libraries(doctor.Options())
    for name in ("lightning", "transformers", "peft", "torchmetrics", "jsonargparse", "tensorboard"):
        assert re.search(rf"\b{name} \d", row.value), (name, row.value)
