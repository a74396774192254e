"""The files the project writes: checked before the work that fills them, written atomically (checkpoints and JSON
whole or not at all), and checkpoints read back with ``weights_only=True``."""

from __future__ import annotations

import json
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from .errors import UserError

_TMP_SUFFIX = ".tmp"


def _umask() -> int:
    current = os.umask(0)  # reading the umask means setting it; put it straight back
    os.umask(current)
    return current


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TMP_SUFFIX, dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # as any file the user writes (mkstemp makes it private, 0600)
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_writable(path: str | Path, where: str) -> Path:
    """Check, before the work that produces it, that the file ``path`` can be written: it is not a directory, its
    folder exists (it is created) and takes new files, and a file already there takes more. Raises a UserError
    naming ``where`` (the setting or option that chose the path), the path and the reason; returns the path."""
    path = Path(path)
    fix = f"remove it or give {where} another path"
    if path.is_dir():
        raise UserError(f"{where}: {path} is a directory, where a file is to be written; {fix}")
    folder = path.parent
    try:
        if folder.exists() and not folder.is_dir():
            raise UserError(f"{where}: {folder} is a file, where a folder is needed for {path.name}; {fix}")
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or exc
        raise UserError(f"{where}: cannot write in {folder}: {reason}; give {where} another path") from None
    if path.exists():
        try:
            with path.open("ab"):  # opened for appending, nothing written: may it be replaced or extended?
                pass
        except OSError as exc:
            raise UserError(f"{where}: cannot write {path}: {exc.strerror or exc}; {fix}") from None
    return path


def remove_temporaries(directory: str | Path) -> list[Path]:
    """Delete the temporary files that atomic writes in ``directory`` left behind when killed; return them.

    Only files named like the ones :func:`save_checkpoint` and :func:`write_json` create
    (``.<name>.<random>.tmp``) are touched. Call it when a run starts, before it writes anything.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    stale = [p for p in directory.glob(f".*.*{_TMP_SUFFIX}") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def save_checkpoint(obj: dict[str, Any], path: str | Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename it into place."""
    _atomic(Path(path), lambda fh: torch.save(obj, fh))


def load_checkpoint(path: str | Path, *, mmap: bool = False) -> dict[str, Any]:
    """Load a checkpoint on the CPU with ``weights_only=True`` (tensors and plain data only); with ``mmap`` the
    tensors stay in the file until read, for when only the plain data is wanted."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        if "global" in str(exc).lower():  # torch refused a global: the file holds arbitrary objects
            raise UserError(
                f"{path}: not a readable ensemblecert checkpoint: it holds objects other than tensors and "
                "plain data, and such files are never loaded because loading them can run code"
            ) from None
        raise UserError(
            f"{path}: not a readable ensemblecert checkpoint: the file is damaged or not a torch checkpoint"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        reason = "truncated" if isinstance(exc, EOFError) else "damaged or not a torch checkpoint"
        raise UserError(f"{path}: not a readable ensemblecert checkpoint: the file is {reason}") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path}: not an ensemblecert checkpoint (expected a dictionary)")
    return obj


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8), atomically."""
    _atomic(Path(path), lambda fh: fh.write(text.encode("utf-8")))


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def plain(obj: Any) -> Any:
    """``obj`` reduced to JSON types (what ``weights_only`` loading accepts), e.g. TOML dates become strings."""
    return json.loads(json.dumps(obj, default=str))
