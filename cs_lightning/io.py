"""The one safe writer: files and folders appear whole or not at all.

Everything cs-lightning writes (checkpoints, exports, tokenizers, token caches, predictions, reports) goes through
these three helpers. Each builds under a temporary name beside the target, flushes it to disk, then renames it into
place; a crash leaves the previous file or folder as it was. A full disk or an exhausted quota is a one-line
:class:`~cs_lightning.errors.CSLightningError` naming the path, never a traceback, and the previous version stays.

- :func:`atomic_path`: a file (the caller writes the temporary path it is given);
- :func:`atomic_dir`: a folder replaced whole; on Linux the new folder is exchanged with the old one in one step
  (``renameat2(RENAME_EXCHANGE)``), so there is no moment where the target is missing;
- :func:`build_dir_once`: a content-keyed cache folder that many processes (every rank of a distributed run) may
  ask for at once: built by one of them under a file lock, found by the others.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from cs_lightning.errors import CSLightningError

_UMASK = os.umask(0)
os.umask(_UMASK)
_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
# what libraries say when they report a full disk in a message instead of an errno (torch's zip writer, tokenizers)
_FULL_TEXT = ("No space left on device", "Disk quota exceeded", "PytorchStreamWriter failed writing")
_ROOM = 1 << 20  # less free space than this after a failed write: the disk is full


def is_disk_full(err: BaseException) -> bool:
    """Whether ``err`` (or an error in its cause chain) reports a full disk or an exhausted quota."""
    while err is not None:
        if isinstance(err, OSError) and err.errno in _FULL:
            return True
        if any(text in str(err) for text in _FULL_TEXT):
            return True
        err = err.__cause__ or err.__context__
    return False


def no_room_left(folder: str | Path) -> bool:
    """Whether the filesystem of ``folder`` is (almost) full: asked after a write failed with an error that does not
    say why (torch's zip writer reports a full disk as "iostream error" or "unexpected pos"), while the partial file
    still takes its space."""
    try:
        return shutil.disk_usage(folder).free < _ROOM
    except OSError:
        return False


def disk_full_error(path: str | Path, what: str = "file") -> CSLightningError:
    """The one-line error for a full disk while writing ``path``."""
    return CSLightningError(f"{path}: disk full or quota exceeded while writing (free space on {Path(path).parent} "
                            f"or write elsewhere); the previous {what}, if any, is intact")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as err:  # some filesystems cannot sync a folder; a file that cannot be synced is a real error
        if not path.is_dir():
            raise err
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends, flush it to disk and rename it to ``path``. On
    any failure the temporary file is deleted and ``path`` keeps its previous content."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        if is_disk_full(err):
            raise disk_full_error(path) from None
        raise
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes owner-only files; give the file the usual permissions
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent)
    except Exception as err:
        if is_disk_full(err) or no_room_left(path.parent):
            raise disk_full_error(path) from None
        raise
    finally:
        tmp.unlink(missing_ok=True)


def _renameat2():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        func = libc.renameat2
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return func


_RENAMEAT2 = _renameat2()
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step; False where the system or filesystem cannot."""
    if _RENAMEAT2 is None:
        return False
    if _RENAMEAT2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def atomic_dir(target: str | Path, fill: Callable[[Path], object]) -> Path:
    """Build a folder with ``fill(tmp)`` and put it in place of ``target`` whole: readers see the old folder or the
    new one, never half of one, and never (on Linux) no folder at all. Returns ``target``."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    except OSError as err:
        if is_disk_full(err):
            raise disk_full_error(target, "folder") from None
        raise
    try:
        fill(tmp)
        for root, _, files in os.walk(tmp):
            for name in files:
                _fsync(Path(root) / name)
        os.chmod(tmp, 0o777 & ~_UMASK)
        if target.exists() and exchange(tmp, target):
            pass  # tmp now holds the old folder, removed below
        else:
            if target.exists():  # no atomic exchange here: move the old folder aside for the shortest moment
                aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
                os.replace(target, aside / target.name)
                os.replace(tmp, target)
                shutil.rmtree(aside, ignore_errors=True)
            else:
                os.replace(tmp, target)
        _fsync(target.parent)
    except Exception as err:
        if is_disk_full(err) or no_room_left(target.parent):
            raise disk_full_error(target, "folder") from None
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def build_dir_once(target: str | Path, build: Callable[[Path], object]) -> Path:
    """The folder ``target`` (a content-keyed cache entry), built by ``build(tmp)`` if no process has built it yet.
    Many processes may ask at once: one builds under a file lock and renames the result into place, the others
    wait and find it."""
    from filelock import FileLock

    target = Path(target)
    if target.exists():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(target) + ".lock"):
            if not target.exists():
                atomic_dir(target, build)
    except OSError as err:
        if is_disk_full(err):
            raise disk_full_error(target, "folder") from None
        raise
    return target
