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


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, saving to a temporary file and renaming it into place."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        import torch

        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)
