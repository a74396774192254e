"""One run at a time in an output directory.

Two runs writing into one directory would interleave their rows (a results file with rows of both, or rows
twice). A run holds an exclusive lock on ``<output>/.ensemblecert.lock`` from before it touches anything there
until it ends; a second run is refused with a message naming the holder. The lock is the operating system's
(``flock``), so it is released when its process ends, however it ends: a killed run never leaves a stale lock.
On systems without ``fcntl`` (Windows) runs are not locked.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import TextIO

from ..errors import UserError
from .preflight import OUTPUT_FIX as _FIX
from .preflight import make_directory

try:  # POSIX only
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".ensemblecert.lock"


class OutputLock:
    """An exclusive lock on an output directory (created if missing), held from :meth:`acquire` to :meth:`release`
    (or as a context manager)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self._fh: TextIO | None = None

    def acquire(self) -> OutputLock:
        d = self.directory
        make_directory(d)
        try:
            fh = self.path.open("a+", encoding="utf-8")
        except OSError as exc:
            raise UserError(f"output: cannot write to {d}: {exc.strerror or exc}; {_FIX}") from None
        if fcntl is not None:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                fh.seek(0)
                holder = _describe(fh.read())
                fh.close()
                raise UserError(
                    f"output: {d} is in use by another ensemblecert run ({holder}); wait for it to finish, "
                    f"stop it, or {_FIX}"
                ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                    "command": " ".join(sys.argv),
                }
            )
            + "\n"
        )
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()  # closing the file releases the lock
            self._fh = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.release()


def _describe(text: str) -> str:
    try:
        info = json.loads(text)
        return f"process {info['pid']} on {info['host']}, started {info['started']}: {info['command']}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown"
