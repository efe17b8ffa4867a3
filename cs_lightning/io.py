"""Writing files so that a crash or a full disk never leaves a truncated file that looks valid."""

from __future__ import annotations

import errno
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from lightning.pytorch.plugins.io import TorchCheckpointIO

from cs_lightning.errors import CSLightningError

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``, on failure delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes owner-only files; give the file the usual permissions
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise CSLightningError(f"{path}: disk full while writing (free space on {path.parent} or write "
                                   "elsewhere); the previous file, if any, is intact") from None
        raise
    finally:
        tmp.unlink(missing_ok=True)


def non_finite_tensors(state: dict, prefix: str = "") -> list[str]:
    """Names of the floating-point tensors in a (nested) state dict that hold NaN or infinity."""
    import torch

    bad = []
    for key, value in state.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            bad += non_finite_tensors(value, f"{name}.")
        elif isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad.append(name)
    return bad


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer: refuses weights that hold NaN or infinity (they would poison every resume), and
    saves to a temporary file that is flushed to disk and renamed into place, so a crash or a full disk mid-write
    leaves the previous checkpoint intact and never a truncated file that looks valid."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        import torch

        bad = non_finite_tensors(checkpoint.get("state_dict", {}))
        if bad:
            raise CSLightningError(f"{path}: not saved, the weights hold NaN or infinity ({', '.join(bad[:3])}"
                                   f"{', ...' if len(bad) > 3 else ''}); lower model.learning_rate or set "
                                   "trainer.gradient_clip_val, and resume from the last good checkpoint")
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
