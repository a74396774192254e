"""The one user-facing error type.

Anything the user can fix (a bad pipeline file, a missing data set, a checkpoint that does not
match its model) is raised as :class:`UserError`. The command line prints its message once, with
no traceback, and exits with status 2. Programming errors stay ordinary exceptions.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class UserError(Exception):
    """A problem in the user's input, explained in words that say where it is and how to fix it."""

    exit_code = 2


class ConfigError(UserError):
    """One or more problems in a pipeline configuration, all reported together.

    Each problem is a line ``path: message`` where ``path`` is the TOML path (``certification.certifiers[0].alpha``).
    """

    def __init__(self, problems: Iterable[str], source: str | None = None, *, partial: Any = None) -> None:
        self.problems = list(problems)
        self.source = source
        #: What could still be read, each unreadable value replaced by its default (``None`` when nothing could),
        #: and the TOML paths so replaced: later checks of settings together run on it, so that every mistake is
        #: reported in one round.
        self.partial = partial
        where = f" in {source}" if source else ""
        count = len(self.problems)
        head = f"{count} problem{'s' if count != 1 else ''}{where}:"
        super().__init__("\n".join([head, *(f"  {p}" for p in self.problems)]))


def file_error(exc: OSError, fix: str = "check the path and its permissions") -> UserError:
    """The UserError for a file the project could not read or write: the path, the system's reason and ``fix``."""
    where = exc.filename if exc.filename is not None else "a file"
    return UserError(f"{where}: {exc.strerror or exc}; {fix}")
