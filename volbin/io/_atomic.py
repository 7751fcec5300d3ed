"""Atomic files and folder locks: the one way volbin puts a file in place.

Every file volbin writes (images, sidecars, manifests, PNG layers, reports, checkpoints) is
written under a temporary name beside its final path, ``<name>.<8 hex>.tmp``, fsync-ed, and
renamed onto the final path; on any error or interruption the temporary is removed, so a
final name never holds a partial file.  `TEMP_NAME` matches those names, so that stale ones
left by a killed process can be found and removed.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from ..errors import OutputFileError
from ._common import _create, _remove

__all__ = ["TEMP_NAME", "atomic_file", "folder_lock", "temp_path", "write_atomic"]

#: Temporary names: ``<name>.<8 hex>.tmp`` (``.nii.tmp`` before gzip, ``.old`` for a
#: directory moved aside while it is replaced).
TEMP_NAME = re.compile(r"^(?P<base>.+)\.[0-9a-f]{8}(\.nii)?\.(tmp|old)$")


def temp_path(final: str | os.PathLike[str], suffix: str = ".tmp") -> Path:
    """A fresh temporary name beside `final`: ``<name>.<8 hex><suffix>``."""
    p = Path(final)
    return p.with_name(f"{p.name}.{secrets.token_hex(4)}{suffix}")


@contextlib.contextmanager
def atomic_file(
    path: str | os.PathLike[str], mode: str = "wb", *, encoding: str | None = None
) -> Iterator[IO[Any]]:
    """Open a temporary file beside `path`; on success fsync it and rename it onto `path`.

    On an exception (KeyboardInterrupt included) the temporary is removed and `path` is left
    as it was.  ``mode`` is ``"wb"`` or ``"w"`` (text, `encoding` default UTF-8).
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"`mode` must be 'wb' or 'w'; got {mode!r}.")
    final = Path(path)
    tmp = temp_path(final)
    fd = _create(tmp)
    try:
        with os.fdopen(fd, mode, encoding=(encoding or "utf-8") if mode == "w" else None) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        _remove(tmp)
        raise


def write_atomic(path: str | os.PathLike[str], data: bytes | str | Callable[[IO[Any]], None]) -> Path:
    """Write `data` (bytes, text, or a function writing to a binary file) to `path` atomically."""
    if isinstance(data, str):
        with atomic_file(path, "w") as f:
            f.write(data)
    elif isinstance(data, bytes):
        with atomic_file(path, "wb") as f:
            f.write(data)
    else:
        with atomic_file(path, "wb") as f:
            data(f)
    return Path(path)


@contextlib.contextmanager
def folder_lock(lock: str | os.PathLike[str], busy: str, *, remove: bool = False) -> Iterator[None]:
    """Hold an exclusive `flock` on the file `lock` (created if missing) while the block runs.

    The lock file is opened without following symbolic links, so a link planted at its name
    cannot make volbin create or truncate a file elsewhere.  Raises `OutputFileError` with
    the message `busy` when another process holds the lock; on file systems without locks
    the block runs unlocked.  With `remove` the lock file is removed when the block ends
    (a process that opened it meanwhile sees that the file it locked is no longer the one
    at that name, and opens the new one).
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    while True:
        try:
            fd = os.open(lock, flags, 0o666)
        except OSError as exc:
            if os.path.islink(lock):
                raise OutputFileError(
                    f"{lock}: the lock file is a symbolic link; remove it (volbin does not follow "
                    "links for its lock files)."
                ) from None
            raise OutputFileError(f"{lock}: cannot create the lock file ({exc.strerror or exc}).") from exc
        locked = True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputFileError(busy) from None
        except OSError:  # file systems without locks: run unlocked
            locked = False
        if locked and remove:
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(lock, follow_symlinks=False))
            except OSError:
                same = False
            if not same:  # removed by the holder we waited for: lock the new file
                os.close(fd)
                continue
        break
    try:
        yield
    finally:
        if remove and locked:
            with contextlib.suppress(OSError):
                os.unlink(lock)
        os.close(fd)
