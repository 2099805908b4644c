"""Paths a user types: ``~`` and ``~user`` expanded, an unknown user's home a one-line error."""

from __future__ import annotations

import os
from pathlib import Path

import click
from filelock import FileLock

from bench.registry import BenchError


def expand_user(path: str | Path) -> Path:
    """``path`` with a leading ``~`` or ``~user`` expanded; BenchError when that home is unknown."""
    expanded = os.path.expanduser(str(path))
    if expanded.startswith("~"):
        raise BenchError(f"{path}: there is no home folder for {expanded.split('/')[0]!r}")
    return Path(expanded)


class UserPath(click.Path):
    """``click.Path`` giving a :class:`~pathlib.Path` with ``~`` expanded (a usage error when it cannot be)."""

    def __init__(self, **kwargs):
        super().__init__(path_type=Path, **kwargs)

    def convert(self, value, param, ctx):
        try:
            value = expand_user(value)
        except BenchError as error:
            self.fail(str(error), param, ctx)
        return super().convert(value, param, ctx)


def file_in_the_way(folder: Path) -> Path | None:
    """``folder`` or the nearest existing path above it when that is not a folder (then ``folder`` cannot be
    made: mkdir fails with NotADirectoryError); None when ``folder`` is or can be a folder."""
    existing = next(p for p in (Path(folder).absolute(), *Path(folder).absolute().parents) if os.path.lexists(p))
    return None if existing.is_dir() else existing


def read_text(path: str | Path, what: str) -> str:
    """The UTF-8 text of ``path`` (a byte-order mark dropped); a one-line BenchError naming ``what`` when
    it cannot be read or is not UTF-8."""
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise BenchError(f"{what} {path} is not UTF-8 text (byte {error.start}): save it as UTF-8") from None
    except OSError as error:
        raise BenchError(f"cannot read {what} {path}: {error.strerror or error}") from None


def atomic_write(path: Path, write) -> None:
    """``write(tmp)`` into a temporary file beside ``path``, then rename it onto ``path``: readers never see
    half a file, and a failed write (a full disk) leaves no temporary file behind. An OSError becomes a
    one-line BenchError naming ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as error:
        raise BenchError(f"cannot write {path}: {error.strerror or error}") from None
    finally:
        tmp.unlink(missing_ok=True)


def file_lock(path: Path, timeout: float = -1):
    """A ``FileLock`` on ``path``, refused in one line when something other than a file is there (a folder
    made the lock library raise ``IsADirectoryError`` from deep inside a run)."""
    path = Path(path)
    if os.path.lexists(path) and not path.is_file():
        raise BenchError(f"{path} is a {'folder' if path.is_dir() else 'special file'} where a lock file belongs: "
                         f"remove it (no bench process is using it) and run again")
    return FileLock(path, timeout=timeout)
