"""User-facing errors: one line that names the file, the line or field, the problem and the fix."""

from __future__ import annotations


_last: list["CSLightningError"] = []


class CSLightningError(Exception):
    """An error caused by the user's input or set-up, printed by the CLI as one line without a traceback."""

    def __init__(self, *args):
        super().__init__(*args)
        _last[:] = [self]  # jsonargparse re-wraps errors raised while it instantiates classes; see user_error()


def user_error(exc: BaseException) -> "CSLightningError | None":
    """The :class:`CSLightningError` behind ``exc``: itself, one in its cause chain, or the last one raised when
    ``exc`` quotes it (jsonargparse turns errors raised in ``__init__`` into a ValueError with their text)."""
    seen = exc
    while seen is not None:
        if isinstance(seen, CSLightningError):
            return seen
        seen = seen.__cause__ or seen.__context__
    if _last and str(_last[0]) in str(exc):
        return _last[0]
    return None


class DataError(CSLightningError, ValueError):
    """A problem in a data file, reported as ``file:line: field: problem (fix)``.

    Args:
        path: the file that holds the problem.
        problem: what is wrong, in a few words.
        line: 1-based line number in the file, when the problem sits on one line.
        field: the column or JSON key concerned, when there is one.
        fix: what the user should do about it.
    """

    def __init__(self, path, problem: str, line: int | None = None, field: str | None = None, fix: str | None = None):
        self.path, self.line, self.field, self.problem, self.fix = str(path), line, field, problem, fix
        where = self.path if line is None else f"{self.path}:{line}"
        what = problem if field is None else f"{field}: {problem}"
        super().__init__(f"{where}: {what}" + (f" ({fix})" if fix else ""))


class ConfigError(CSLightningError, ValueError):
    """A setting in the config that cannot work, named by its config key."""

    def __init__(self, key: str, problem: str, fix: str | None = None):
        self.key = key
        super().__init__(f"{key}: {problem}" + (f" ({fix})" if fix else ""))
