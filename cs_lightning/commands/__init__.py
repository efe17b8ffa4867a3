"""The console programs, one module each; ``setup.cfg`` maps the program names to their ``main``:

========================  =============================================================
``cs-train``              :mod:`cs_lightning.commands.train` (the LightningCLI)
``cs-data``               :mod:`cs_lightning.commands.data` (validate, import)
``cs-export``             :mod:`cs_lightning.commands.export`
``cs-chat``               :mod:`cs_lightning.commands.chat`
``cs-backbones``          :mod:`cs_lightning.commands.backbones`
``cs-doctor``             :mod:`cs_lightning.commands.doctor`
``cs-serve``              :mod:`cs_lightning.commands.serve`
``cs-runs``               :mod:`cs_lightning.commands.runs`
========================  =============================================================

Every program reports a user's mistake the same way, through :func:`run_command`: one line
``<program>: error: <what> (<fix>)`` on stderr and a non-zero exit, never a traceback. Nothing below this package
imports it.
"""

from __future__ import annotations

import sys
from typing import Callable, NoReturn

from cs_lightning.errors import user_error


def fail(prog: str, message: object, code: int = 2) -> NoReturn:
    """Print ``prog: error: message`` on stderr and exit with ``code``."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def run_command(prog: str, body: Callable[[], int | None], code: int = 2,
                also: tuple[type[BaseException], ...] = ()) -> None:
    """Run a program's body. A :class:`~cs_lightning.errors.CSLightningError` (raised directly or behind another
    error), or one of the ``also`` types, becomes one line on stderr and exit status ``code``; anything else is a
    bug and keeps its traceback. A body that returns an int exits with it."""
    try:
        result = body()
    except Exception as exc:  # noqa: BLE001 - sorted into user errors and bugs just below
        err = user_error(exc) or (exc if isinstance(exc, also) else None)
        if err is None:
            raise
        fail(prog, err, code)
    if result is not None:
        raise SystemExit(result)
