"""The one checkpoint module: every checkpoint cs-lightning reads or writes goes through here.

Reading (:func:`read_checkpoint`, :func:`load_module`) always uses ``torch.load(weights_only=True)``: a file that
would need arbitrary code to load is refused. A missing, truncated, damaged or foreign file, and a checkpoint of the
wrong task, are each a one-line :class:`~cs_lightning.errors.ConfigError` naming the setting that pointed at it.
Writing (:class:`AtomicCheckpointIO`, Lightning's checkpoint plugin in ``cs-train``) refuses NaN weights and
writes through :func:`cs_lightning.io.atomic_path`, so a crash or a full disk never leaves a truncated file.

``cs-train --ckpt_path``, ``cs-export``, ``cs-chat`` and the ``ExportBest`` callback all use these functions.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from cs_lightning.errors import ConfigError, CSLightningError
from cs_lightning.io import atomic_path

FIX = "give a .ckpt written by cs-train (logs/<experiment>/checkpoints/)"


def read_checkpoint(path: str | Path, key: str = "ckpt_path", mmap: bool = False, any_module: bool = False) -> dict:
    """The checkpoint dictionary at ``path``, loaded with ``weights_only=True`` onto the CPU.

    Args:
        path: the ``.ckpt`` file.
        key: the setting or argument that named the file, for the error message (``ckpt_path``, ``--ckpt``).
        mmap: map the file instead of reading it: the tensors stay on disk until touched (cheap when only the
            hyper-parameters are wanted).
        any_module: accept a Lightning checkpoint of any LightningModule (a user's own), not only of ours.

    Raises:
        ConfigError: the file is missing, a folder, truncated or damaged, holds objects only arbitrary code could
            load, or is not a cs-lightning checkpoint.
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(key, f"checkpoint {path} not found", FIX)
    if not path.is_file():
        raise ConfigError(key, f"{path} is a folder, not a checkpoint file", FIX)
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # a truncated file, not a checkpoint, or one that would need to run code
        text = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
        if text.startswith("Weights only load failed") or "weights_only" in text:
            why = "it holds objects that only arbitrary code could load, which cs-lightning never runs"
        elif text.startswith(("PytorchStreamReader failed", "mmap can only be used", "Invalid magic number",
                              "unpickling stack underflow", "invalid load key")) or "zip archive" in text:
            why = "the file is truncated, damaged, or not a torch checkpoint"
        else:
            why = text
        raise ConfigError(key, f"{path} is not a readable checkpoint ({why})", FIX) from None
    if not isinstance(raw, dict) or "state_dict" not in raw:
        raise ConfigError(key, f"{path} is not a Lightning checkpoint (no state_dict: a bare weights file?)", FIX)
    if not any_module and "cs_lightning" not in raw and "_class_path" not in raw.get("hyper_parameters", {}):
        raise ConfigError(key, f"{path} was not written by cs-lightning (no model class recorded)", FIX)
    return raw


def class_path(raw: dict) -> str:
    """The LightningModule class that wrote a checkpoint, as ``module.Class``."""
    recorded = (raw.get("cs_lightning") or {}).get("class_path") or raw.get("hyper_parameters", {}).get("_class_path")
    if recorded:
        return recorded
    hparams = raw.get("hyper_parameters", {})  # written before the class was recorded
    return "cs_lightning.models.IntentClassifier" if "labels" in hparams else "cs_lightning.models.ReplyGenerator"


def model_class(raw: dict, key: str = "ckpt_path") -> type:
    """The class of :func:`class_path`, imported."""
    path = class_path(raw)
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ConfigError(key, f"the checkpoint's model class {path} cannot be imported ({err})",
                          "install the package that provides it, or put its file on PYTHONPATH") from None


def task_of(raw: dict) -> str | None:
    """The task (``intent``, ``reply``) a checkpoint was trained for, None when its class has none."""
    recorded = (raw.get("cs_lightning") or {}).get("task")
    if recorded:
        return recorded
    try:
        return getattr(model_class(raw), "task", None) or None
    except ConfigError:
        return None


def check_task(raw: dict, task: str, path: str | Path, key: str = "ckpt_path", fix: str | None = None) -> None:
    """Refuse a checkpoint of another task with one line."""
    found = task_of(raw)
    if found is not None and found != task:
        raise ConfigError(key, f"{path} is a {found} checkpoint ({class_path(raw).rpartition('.')[2]}), but "
                               f"{task} is needed here", fix or f"give a {task} checkpoint")


def check_vocabulary(raw: dict, module, path: str | Path, key: str = "ckpt_path") -> None:
    """Refuse, in one line, a checkpoint whose input embeddings do not fit the tokenizer ``module`` was built with
    (``load_state_dict`` would otherwise stop with a size-mismatch traceback)."""
    model = getattr(module, "model", None)
    tokenizer = getattr(module, "tokenizer", None)
    if model is None or tokenizer is None or not hasattr(model, "get_input_embeddings"):
        return
    weight = model.get_input_embeddings().weight
    name = next((n for n, p in module.named_parameters() if p is weight), None)
    saved = raw.get("state_dict", {}).get(name) if name else None
    if saved is not None and saved.shape[0] != weight.shape[0]:
        raise ConfigError(key, f"{path} was trained with a {saved.shape[0]}-row vocabulary, but the tokenizer it is read "
                               f"with gives {weight.shape[0]} ({getattr(tokenizer, 'name_or_path', '?')})",
                          "keep the tokenizer/ folder saved beside the checkpoint, or give the tokenizer it was "
                          "trained with")


def load_module(ckpt_path: str | Path, task: str | None = None, key: str = "ckpt"):
    """The LightningModule of a cs-lightning checkpoint, in eval mode, built from the files saved beside it
    (tokenizer, config, rules), so the original data and weights are not needed; an adapter checkpoint
    (``model.peft``) is rebuilt on the base weights it records (their source), then its adapter state.

    Args:
        ckpt_path: the checkpoint file.
        task: refuse checkpoints of another task (``intent``, ``reply``).
        key: the argument that named the file, for error messages.

    Returns:
        ``(module, datamodule_hparams)``.
    """
    ckpt_path = Path(ckpt_path)
    raw = read_checkpoint(ckpt_path, key, mmap=True)
    if task is not None:
        check_task(raw, task, ckpt_path, key)
    folder = ckpt_path.parent
    hparams = raw.get("hyper_parameters", {})
    overrides: dict[str, Any] = {}
    if (folder / "tokenizer").is_dir():
        overrides["tokenizer_path"] = str(folder / "tokenizer")
    adapters = (raw.get("cs_lightning") or {}).get("adapters")
    if (folder / "config.json").is_file() and not adapters:
        overrides.update(model_name_or_path=str(folder), pretrained=False)
    # an adapter checkpoint holds no base weights: the module loads them from the source it records, and its
    # on_load_checkpoint refuses other weights than those the adapters were trained on (their hash)
    if (folder / "rules.yaml").is_file() and "rules_path" in hparams:
        overrides["rules_path"] = str(folder / "rules.yaml")
    module = model_class(raw, key).load_from_checkpoint(ckpt_path, map_location="cpu", weights_only=True,
                                                        **overrides)
    module.eval()
    return module, dict(raw.get("datamodule_hyper_parameters", {}))


def non_finite_tensors(state: dict, prefix: str = "") -> list[str]:
    """Names of the floating-point tensors in a (nested) state dict that hold NaN or infinity."""
    bad = []
    for key, value in state.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            bad += non_finite_tensors(value, f"{name}.")
        elif isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad.append(name)
    return bad


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint reader and writer in ``cs-train``.

    Saving refuses weights that hold NaN or infinity (they would poison every resume) and writes through
    :func:`cs_lightning.io.atomic_path`: a temporary file, flushed to disk, renamed into place, so a crash or a full
    disk mid-write leaves the previous checkpoint intact. Loading always uses ``weights_only=True``.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        bad = non_finite_tensors(checkpoint.get("state_dict", {}))
        if bad:
            raise CSLightningError(f"{path}: not saved, the weights hold NaN or infinity ({', '.join(bad[:3])}"
                                   f"{', ...' if len(bad) > 3 else ''}); lower model.learning_rate or set "
                                   "trainer.gradient_clip_val, and resume from the last good checkpoint")
        with atomic_path(path) as tmp:  # flushed to disk and renamed into place there
            torch.save(checkpoint, tmp)

    def load_checkpoint(self, path, map_location=None, weights_only: bool | None = None) -> dict[str, Any]:
        return read_checkpoint(path, any_module=True)
